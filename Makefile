# Quick start: `make demo` (set up and run the main job) and `make test` (set up and run the tests).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch (local wheel on these machines); a plain `torch` would pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0

# The optional torchvision lane (`make test-vision`): its own virtualenv, since torchvision needs another torch
# build (a CUDA one, ~6 GB) than the CPU wheel of the main lane.
VISION_VENV ?= .venv-vision
VISION_SPEC ?= torch==2.14.1 torchvision==0.29.1 timm
VISION_TESTS ?= tests/test_structured_pruning.py tests/test_cli_and_pipeline.py

.PHONY: demo test test-vision install lint format bench docs clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev,plot,progress,images,lightning,huggingface]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/ceag-cooper demo

test: install
	$(PY) -m pytest

$(VISION_VENV)/.installed: setup.cfg pyproject.toml
	test -x $(VISION_VENV)/bin/python || $(PYTHON) -m venv $(VISION_VENV)
	$(VISION_VENV)/bin/python -m pip install -q $(VISION_SPEC)
	$(VISION_VENV)/bin/python -m pip install -q -e ".[dev,plot,progress,images]"
	touch $@

# The tests that need torchvision or timm (they skip in `make test`): their models under channel pruning
# (finalized == masked, or a refusal naming the layer), and the CLI's `prune --model resnet18 --pruning
# channel` end to end on a UTKFace subset, rerun from its results JSON.
test-vision: $(VISION_VENV)/.installed
	$(VISION_VENV)/bin/python -m pytest $(VISION_TESTS) -k "torchvision or timm or resnet18 or model_names" -rs

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/overhead.py

# The API reference from the docstrings plus the pages in docs/ (Sphinx + MyST): docs/_build/html/index.html.
# -W: any warning fails the build; -E: every page is read again, so every warning shows each time.
# autodoc imports the package and runs none of its code: no data set is read.
$(VENV)/.docs-installed: $(VENV)/.installed setup.cfg
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs-installed
	$(PY) -m sphinx -W --keep-going -E -q -b html -d docs/_build/doctrees docs docs/_build/html

clean:
	rm -rf $(VENV) $(VISION_VENV) build *.egg-info docs/_build
