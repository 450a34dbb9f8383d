"""Pruning + CEAG in a Lightning fit (optional extra: skips cleanly without `lightning`)."""

import pytest
import torch

L = pytest.importorskip("lightning", reason="the Lightning integration needs `pip install lightning`")

import ceag_cooper as cc  # noqa: E402
from ceag_cooper.integrations.lightning import FairnessCallback  # noqa: E402
from ceag_cooper.pruning import GradualSchedule, MagnitudePruner  # noqa: E402

GROUPS = 3


def data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=generator)
    g = torch.randint(0, GROUPS, (256,), generator=generator)
    y = ((x[:, 0] + (g == 2).float() * x[:, 1]) > 0).long()
    return torch.utils.data.TensorDataset(x, y, g)


class Module(L.LightningModule):
    def __init__(self, callback_ref):
        super().__init__()
        self.automatic_optimization = False  # Cooper steps; Lightning still counts through optimizers()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        self.callback_ref = callback_ref

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y, g = batch
        return self.callback_ref[0].roll(self, model=self, inputs=x, targets=y, group_ids=g)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def build(tmp_path, max_epochs):
    torch.manual_seed(0)
    holder = []
    module = Module(holder)
    loader = torch.utils.data.DataLoader(data(), batch_size=32, shuffle=False)
    reference = cc.evaluate_groups(module, loader, groups=GROUPS)
    problem = cc.CEAG(reference=reference, tolerance=0.0, buffer_size=8, start_step=8)
    pruner = MagnitudePruner(module.net, schedule=GradualSchedule(0.5, num_updates=2))
    callback = FairnessCallback(problem, pruner=pruner, dual_lr=0.5, log_every_n_steps=1)
    holder.append(callback)
    trainer = L.Trainer(max_epochs=max_epochs, default_root_dir=tmp_path, accelerator="cpu", logger=False,
                        callbacks=[callback], enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    return module, loader, callback, trainer


def test_a_lightning_fit_prunes_moves_multipliers_checkpoints_and_resumes(tmp_path):
    module, loader, callback, trainer = build(tmp_path, max_epochs=3)
    trainer.fit(module, loader)
    assert trainer.global_step == 3 * 8  # Lightning saw every step (it used to stay at 0)
    assert callback.pruner.measured_sparsity() == pytest.approx(0.5, abs=0.02)
    assert bool((callback.problem.multiplier_values > 0).any())
    checkpoints = sorted((tmp_path).rglob("*.ckpt"))
    assert checkpoints, "Lightning wrote no checkpoint"
    saved = torch.load(checkpoints[-1], weights_only=False)
    state = next(v for k, v in saved["callbacks"].items() if "FairnessCallback" in k)
    restored = build(tmp_path / "probe", max_epochs=1)[2]
    restored.load_state_dict(state)
    assert torch.equal(restored.problem.multiplier_values, callback.problem.multiplier_values)
    # Resume into fresh objects: same multipliers and masks before the first new step.
    module2, loader2, callback2, trainer2 = build(tmp_path / "resumed", max_epochs=4)
    seen = {}

    class Probe(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen["multipliers"] = callback2.problem.multiplier_values.clone()
            seen["masks"] = {k: v.clone() for k, v in callback2.pruner.masks.items()}

    trainer2.callbacks.append(Probe())
    trainer2.fit(module2, loader2, ckpt_path=checkpoints[-1])
    assert torch.equal(seen["multipliers"], callback.problem.multiplier_values)
    assert all(torch.equal(seen["masks"][k], m) for k, m in callback.pruner.masks.items())
    assert trainer2.global_step == 4 * 8
    for name, mask in callback2.pruner.masks.items():  # the masks held through the resumed epoch
        assert torch.all(dict(module2.net.named_parameters())[name][~mask] == 0)


def test_callback_state_of_the_earlier_layout_loads_and_a_foreign_one_is_refused_before_loading():
    """Before the "dual" entry the callback saved the whole Cooper state under "cooper"; its dual part is used."""
    problem = cc.Unconstrained(num_groups=2)
    callback = FairnessCallback(problem)
    dual_state = [{"state": {}, "param_groups": [{"lr": 0.5, "params": [0]}]}]
    old = {"problem": problem.state_dict(), "pruner": None,
           "cooper": {"primal_optimizer_states": [{}], "dual_optimizer_states": dual_state}}  # fmt: skip
    callback.load_state_dict(old)
    assert callback.state_dict()["dual"] == dual_state  # pending until the Cooper optimizer is built
    with pytest.raises(ValueError, match=r"keys \['problem', 'pruner'\], not those FairnessCallback writes"):
        callback.load_state_dict({"problem": problem.state_dict(), "pruner": None})
    net = torch.nn.Linear(6, 2)
    masked = {"problem": problem.state_dict(), "pruner": {"masks": {}}, "dual": None}
    with pytest.raises(ValueError, match="holds pruning masks: pass the run's pruner"):
        FairnessCallback(problem).load_state_dict(masked)
    pruner = MagnitudePruner(net, schedule=GradualSchedule(0.5, num_updates=2), prune_last_linear=True)
    with pytest.raises(ValueError, match="no pruner state"):
        FairnessCallback(problem, pruner=pruner).load_state_dict({**masked, "pruner": None})
