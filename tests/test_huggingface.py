"""The Hugging Face recipe: a BERT-like classifier built from a config trains under CEAG in a Trainer."""

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="the huggingface extra (transformers) is not installed")
pytest.importorskip("accelerate", reason="the huggingface extra (accelerate) is not installed")

import ceag_cooper as cc  # noqa: E402
from ceag_cooper.integrations.huggingface import PROBLEM_STATE_FILE, FairnessTrainer  # noqa: E402


def tiny_bert(seed=0):
    torch.manual_seed(seed)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)  # fmt: skip
    return transformers.BertForSequenceClassification(config)


def rows(count=96, seed=0):
    """Token sequences whose label is set by one token; group 1 (a quarter) uses another token."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for i in range(count):
        group = int(i % 4 == 0)
        label = int(torch.rand(1, generator=generator) < 0.5)
        ids = torch.randint(3, 40, (8,), generator=generator)
        ids[0] = 1 + label + 2 * group
        data.append({"input_ids": ids, "attention_mask": torch.ones(8, dtype=torch.long),
                     "labels": torch.tensor(label), "group_ids": torch.tensor(group)})  # fmt: skip
    return data


def batches(data, size=32):
    for start in range(0, len(data), size):
        chunk = data[start : start + size]
        inputs = {k: torch.stack([r[k] for r in chunk]) for k in ("input_ids", "attention_mask")}
        yield inputs, torch.stack([r["labels"] for r in chunk]), torch.stack([r["group_ids"] for r in chunk])


def arguments(folder, **overrides):
    settings = {
        "output_dir": str(folder), "per_device_train_batch_size": 16, "num_train_epochs": 2, "learning_rate": 5e-3,
        "logging_steps": 1, "save_strategy": "steps", "save_steps": 6, "report_to": [], "use_cpu": True,
        "remove_unused_columns": False, "seed": 0, "disable_tqdm": True,
    }  # fmt: skip
    return transformers.TrainingArguments(**{**settings, **overrides})


def test_a_bert_classifier_trains_under_ceag_in_a_trainer_and_resumes(tmp_path):
    data = rows()
    model = tiny_bert()
    reference = cc.evaluate_groups(model, list(batches(data)), groups=2)
    problem = cc.CEAG(reference=reference, tolerance=0.0, buffer_size=4)
    trainer = FairnessTrainer(model=model, args=arguments(tmp_path), train_dataset=data, problem=problem,
                              cooper_kwargs={"dual_lr": 0.5})  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 12  # the Trainer's own stepping counted every step (96 / 16 x 2)
    moved = problem.multiplier_values
    assert bool((moved > 0).any())  # the dual step ran inside the Trainer's loop
    assert problem.num_steps == 12
    logged = [entry for entry in trainer.state.log_history if "fairness/multiplier_sum" in entry]
    assert logged
    checkpoint = tmp_path / "checkpoint-6"
    saved = torch.load(checkpoint / PROBLEM_STATE_FILE, weights_only=True)
    # resume from the middle: the problem comes back as it was at step 6, then trains to the end
    fresh_problem = cc.CEAG(reference=reference, tolerance=0.0, buffer_size=4)
    again = FairnessTrainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=data,
                            problem=fresh_problem, cooper_kwargs={"dual_lr": 0.5})  # fmt: skip
    original_load = fresh_problem.load_state_dict
    restored = {}

    def spy(state):
        original_load(state)
        restored["multipliers"] = fresh_problem.multiplier_values

    fresh_problem.load_state_dict = spy
    again.train(resume_from_checkpoint=str(checkpoint))
    at_step_6 = cc.CEAG(reference=reference, tolerance=0.0, buffer_size=4)
    at_step_6.load_state_dict(saved["problem"])
    assert at_step_6.num_steps == 6
    assert torch.equal(restored["multipliers"], at_step_6.multiplier_values)  # resumed from the checkpoint's
    assert bool((restored["multipliers"] > 0).any())  # ... which had moved already
    assert fresh_problem.num_steps == 12  # 6 restored + 6 trained
    with pytest.raises(ValueError, match="no 'group_ids' column"):
        FairnessTrainer(model=tiny_bert(), args=arguments(tmp_path / "x"),
                        train_dataset=[{k: v for k, v in r.items() if k != "group_ids"} for r in data],
                        problem=cc.CEAG(reference=reference, buffer_size=None)).train()  # fmt: skip


def _one_step(tmp_path, problem, **cooper_kwargs):
    model = tiny_bert()
    trainer = FairnessTrainer(model=model, args=arguments(tmp_path, max_steps=1, optim="sgd", learning_rate=0.5,
                                                          lr_scheduler_type="constant", save_strategy="no"),
                              train_dataset=rows(), problem=problem, cooper_kwargs=cooper_kwargs)  # fmt: skip
    trainer.train()
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach(), trainer


def test_the_trainer_honours_the_step_order(tmp_path):
    """Simultaneous: the first model step sees the initial (zero) multipliers; dual-primal: the updated ones."""
    data = rows()
    reference = cc.evaluate_groups(tiny_bert(), list(batches(data)), groups=2)

    def ceag():
        return cc.CEAG(reference=reference, tolerance=0.0, buffer_size=None)  # every violation is strict at 0

    plain, _ = _one_step(tmp_path / "plain", cc.Unconstrained(num_groups=2))
    simultaneous_problem, dual_first_problem = ceag(), ceag()
    simultaneous, simultaneous_trainer = _one_step(
        tmp_path / "sim", simultaneous_problem, dual_lr=5.0, order="simultaneous"
    )
    dual_first, dual_first_trainer = _one_step(tmp_path / "dp", dual_first_problem, dual_lr=5.0, order="dual_primal")
    for trainer, problem in ((simultaneous_trainer, simultaneous_problem), (dual_first_trainer, dual_first_problem)):
        (logged,) = [e["fairness/multiplier_sum"] for e in trainer.state.log_history if "loss" in e]  # the step's log
        assert logged > 0  # logged after the dual step (the first step's multipliers start at 0)
        assert logged == pytest.approx(float(problem.multiplier_values.sum()))
    # both took the same dual step (from the same batch's violations), and it moved a multiplier
    assert torch.equal(simultaneous_problem.multiplier_values, dual_first_problem.multiplier_values)
    assert bool((dual_first_problem.multiplier_values > 0).any())
    assert torch.allclose(simultaneous, plain, atol=1e-6)  # zero multipliers: the plain loss's step
    assert not torch.allclose(dual_first, plain, atol=1e-4)  # the moved multipliers changed the model's step


def test_the_trainer_prunes_on_schedule_and_resumes_the_masks(tmp_path):
    data = rows()
    reference = cc.evaluate_groups(tiny_bert(), list(batches(data)), groups=2)

    def setup(folder):
        model = tiny_bert()
        pruner = cc.MagnitudePruner(model, schedule=cc.GradualSchedule(0.5, num_updates=2))
        problem = cc.CEAG(reference=reference, buffer_size=4)
        trainer = FairnessTrainer(model=model, args=arguments(folder), train_dataset=data, pruner=pruner,
                                  problem=problem, cooper_kwargs={"dual_lr": 0.5})  # fmt: skip
        return model, pruner, trainer

    model, pruner, trainer = setup(tmp_path)
    trainer.train()
    assert pruner.measured_sparsity() == pytest.approx(0.5, abs=0.02)  # two schedule steps, one per epoch
    params = dict(model.named_parameters())
    assert all(bool((params[name][~mask] == 0).all()) for name, mask in pruner.masks.items())  # held after steps
    assert any(entry.get("sparsity") for entry in trainer.state.log_history)
    saved = torch.load(tmp_path / "checkpoint-6" / PROBLEM_STATE_FILE, weights_only=True)
    assert saved["pruner"]["current_step"] == 1  # one epoch in: the first of two schedule steps
    _, again, resumed = setup(tmp_path)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))
    assert again.current_step == 2
    assert all(torch.equal(again.masks[name], mask) for name, mask in pruner.masks.items())  # same run, resumed
    saved.pop("pruner")  # a checkpoint written without a pruner cannot resume one
    torch.save(saved, tmp_path / "checkpoint-6" / PROBLEM_STATE_FILE)
    with pytest.raises(ValueError, match="no pruner state"):
        setup(tmp_path)[2].train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))


def test_a_nupi_dual_resumes_and_the_trainer_refuses_what_it_cannot_do_right(tmp_path):
    """nuPI's state (an enum inside) loads under weights_only; accumulation warns; masks need their pruner."""
    data = rows()
    reference = cc.evaluate_groups(tiny_bert(), list(batches(data)), groups=2)
    nupi = {"dual_lr": 0.5, "dual_optimizer": "nupi", "proportional_gain": 1.0, "ema_nu": 0.5}
    trainer = FairnessTrainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=data,
                              problem=cc.CEAG(reference=reference, buffer_size=4), cooper_kwargs=nupi)  # fmt: skip
    trainer.train()
    resumed = FairnessTrainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=data,
                              problem=cc.CEAG(reference=reference, buffer_size=4), cooper_kwargs=nupi)  # fmt: skip
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))  # raised UnpicklingError before
    assert resumed.state.global_step == 12
    problem = cc.CEAG(reference=reference, buffer_size=4)
    twice = arguments(tmp_path / "a", gradient_accumulation_steps=2)
    with pytest.warns(UserWarning, match="one dual step per micro-batch"):
        accumulating = FairnessTrainer(model=tiny_bert(), args=twice, train_dataset=data, problem=problem)
    assert accumulating.model_accepts_loss_kwargs is False  # so that the Trainer divides the loss by the steps
    with pytest.raises(ValueError, match="`order` must be one of"):
        FairnessTrainer(model=tiny_bert(), args=arguments(tmp_path / "o"), train_dataset=data, problem=problem,
                        cooper_kwargs={"order": "Simultaneous"})  # fmt: skip
    saved = torch.load(tmp_path / "checkpoint-6" / PROBLEM_STATE_FILE, weights_only=False)
    saved["pruner"] = {"masks": {}}
    torch.save(saved, tmp_path / "checkpoint-6" / PROBLEM_STATE_FILE)
    with pytest.raises(ValueError, match="holds pruning masks: pass the run's pruner"):
        FairnessTrainer(model=tiny_bert(), args=arguments(tmp_path), train_dataset=data,
                        problem=cc.CEAG(reference=reference, buffer_size=4),
                        cooper_kwargs=nupi).train(resume_from_checkpoint=str(tmp_path / "checkpoint-6"))  # fmt: skip


def test_the_logged_multipliers_are_those_of_the_logged_step(tmp_path):
    """With logging_steps=2 a log shows the multipliers after its own step, not after the one before."""
    data = rows()
    reference = cc.evaluate_groups(tiny_bert(), list(batches(data)), groups=2)
    problem = cc.CEAG(reference=reference, tolerance=0.0, buffer_size=None)
    sums = {}

    class Record(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sums[state.global_step] = float(problem.multiplier_values.sum())

    trainer = FairnessTrainer(model=tiny_bert(), args=arguments(tmp_path, max_steps=4, logging_steps=2,
                                                                save_strategy="no"),
                              train_dataset=data, problem=problem, cooper_kwargs={"dual_lr": 0.5},
                              callbacks=[Record()])  # fmt: skip
    trainer.train()
    logged = {e["step"]: e["fairness/multiplier_sum"] for e in trainer.state.log_history if "loss" in e}
    assert sorted(logged) == [2, 4]
    assert len({sums[1], sums[2], sums[3], sums[4]}) == 4  # they moved every step: a stale log would differ
    for step, value in logged.items():
        assert value == pytest.approx(sums[step])
