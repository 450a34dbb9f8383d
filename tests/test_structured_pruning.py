"""Structured channel pruning: masked training, then physical removal with equal outputs."""

import pytest
import torch
from torch import nn

from ceag_cooper.models import SmallCNN, cifar_resnet
from ceag_cooper.pruning import ChannelPruner, GradualSchedule, OneShotSchedule


def train_a_little(model, pruner, steps=5):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    pruner.attach(optimizer)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32, generator=gen), torch.randint(0, 5, (8,), generator=gen)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("importance", ["magnitude", "bn_scale"])
def test_residual_cnn_finalize_matches_the_masked_model(importance):
    torch.manual_seed(0)
    model = cifar_resnet(20, num_classes=5, width=8)
    example = torch.randn(2, 3, 32, 32)
    pruner = ChannelPruner(model, example, schedule=GradualSchedule(0.5, num_updates=2), importance=importance)
    pruner.step(0)
    pruner.step(1)
    train_a_little(model, pruner)
    pruner.step(2)
    assert pruner.channel_sparsity() == pytest.approx(0.5, abs=0.05)
    masked_report = pruner.report()
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    masked = model(x)
    small = pruner.finalize()
    torch.testing.assert_close(small(x), masked, atol=1e-5, rtol=1e-5)
    report = pruner.report()
    params = sum(p.numel() for p in small.parameters())
    assert report["params"] == params
    assert params < 0.5 * report["dense_params"]
    assert report["macs"] < 0.5 * report["dense_macs"]
    assert masked_report["params"] == params  # the masked count predicted the finalized size
    assert all(layer["kept"] < layer["channels"] for layer in report["layers"].values())


def test_masked_channels_stay_zero_through_training():
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=8)
    pruner = ChannelPruner(model, torch.randn(2, 3, 32, 32), schedule=OneShotSchedule(0.25))
    pruner.step(0)
    train_a_little(model, pruner, steps=10)
    params = dict(model.named_parameters())
    for name, mask in pruner.masks.items():
        assert (params[name][~mask] == 0).all(), name
    assert model.classifier.out_features == 5


def test_checkpoint_round_trip_of_masks():
    model = SmallCNN(num_classes=5, width=8)
    example = torch.randn(2, 3, 32, 32)
    pruner = ChannelPruner(model, example, schedule=OneShotSchedule(0.5))
    pruner.step(0)
    twin = SmallCNN(num_classes=5, width=8)
    twin.load_state_dict(model.state_dict())
    twin_pruner = ChannelPruner(twin, example, schedule=OneShotSchedule(0.5))
    twin_pruner.load_state_dict(pruner.state_dict())
    assert twin_pruner.channel_sparsity() == pruner.channel_sparsity()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(twin_pruner.finalize().eval()(x), pruner.finalize().eval()(x))


def test_untraceable_inputs_and_bad_arguments_are_named():
    model = SmallCNN(num_classes=5, width=8)
    pruner = ChannelPruner(model, torch.randn(2, 3, 32, 32), schedule=OneShotSchedule(0.5))
    pruner.example_inputs = torch.randn(2, 7, 32, 32)  # wrong channel count
    with pytest.raises(ValueError, match="could not trace SmallCNN"):
        pruner.step(0)
    with pytest.raises(ValueError, match="ignored_layers"):
        ChannelPruner(model, torch.randn(2, 3, 32, 32), schedule=OneShotSchedule(0.5), ignored_layers=["head"])
    with pytest.raises(ValueError, match="importance"):
        ChannelPruner(model, torch.randn(2, 3, 32, 32), schedule=OneShotSchedule(0.5), importance="random-ish")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models(name):
    models = pytest.importorskip("torchvision.models", reason="torchvision (the `vision` extra) is not installed")
    torch.manual_seed(0)
    model = getattr(models, name)(num_classes=5).eval()
    example = torch.randn(1, 3, 64, 64)
    pruner = ChannelPruner(model, example, schedule=OneShotSchedule(0.3))
    pruner.step(0)
    masked = model(example)
    small = pruner.finalize()
    torch.testing.assert_close(small(example), masked, atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in small.parameters()) < pruner.dense_params


@pytest.mark.parametrize(
    ("norm", "name"),
    [(lambda: nn.LayerNorm(16), "LayerNorm"), (lambda: nn.GroupNorm(4, 16), "GroupNorm")],
)
def test_channel_mixing_norms_are_refused_not_silently_wrong(norm, name):
    """Regression (issue #17 item 1): masked != finalized by 0.18 (LayerNorm) and 0.31 (GroupNorm)."""
    torch.manual_seed(0)
    if name == "LayerNorm":
        model = nn.Sequential(nn.Linear(8, 16), norm(), nn.ReLU(), nn.Linear(16, 3))
        example = torch.randn(4, 8)
    else:
        model = nn.Sequential(nn.Conv2d(3, 16, 3), norm(), nn.ReLU(), nn.Flatten(), nn.LazyLinear(3))
        model(torch.randn(1, 3, 8, 8))
        example = torch.randn(4, 3, 8, 8)
    pruner = ChannelPruner(model, example, schedule=OneShotSchedule(0.5))
    with pytest.raises(ValueError, match=rf"\({name}\) normalizes over the channels that would be pruned"):
        pruner.step(0)


def test_finalize_refuses_a_removal_that_changes_the_outputs(monkeypatch):
    """finalize() compares the finalized outputs with the masked model's and keeps the model on a mismatch."""
    torch.manual_seed(0)
    model = SmallCNN(num_classes=5, width=8)
    example = torch.randn(2, 3, 32, 32)
    pruner = ChannelPruner(model, example, schedule=OneShotSchedule(0.5))
    pruner.step(0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    original = ChannelPruner._remove_channels

    def wrong_channels(self, target):  # as if a coupled layer were handled wrongly
        self._pruned = {name: {(i + 1) % 8 for i in idxs} for name, idxs in self._pruned.items()}
        original(self, target)

    monkeypatch.setattr(ChannelPruner, "_remove_channels", wrong_channels)
    with pytest.raises(ValueError, match="changes the model's outputs on `example_inputs` by up to"):
        pruner.finalize()
    assert not pruner.finalized
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # left masked and unchanged


class _HeadAttention(nn.Module):
    """Self-attention that reshapes q, k, v into heads of a fixed size (as ViT / BERT code does)."""

    def __init__(self, width=16, heads=2):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        weights = torch.softmax(torch.einsum("bthd,bshd->bhts", q, k) / (d // self.heads) ** 0.5, dim=-1)
        return self.out(torch.einsum("bhts,bshd->bthd", weights, v).reshape(b, t, d))


class _TinyViT(nn.Module):
    def __init__(self, attention="mha"):
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True) if attention == "mha" else _HeadAttention()
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        z = self.embed(x)
        z = z + (self.attn(z, z, z, need_weights=False)[0] if isinstance(self.attn, nn.MultiheadAttention)
                 else self.attn(z))  # fmt: skip
        return self.head((z + self.mlp(z)).mean(1))


def test_attention_blocks_are_refused_or_pruned_exactly():
    """Issue #17 items 1-2: ViT-style blocks either finalize to the masked model or refuse clearly."""
    torch.manual_seed(0)
    x = torch.randn(4, 5, 6)
    with pytest.raises(ValueError, match=r"'attn' \(MultiheadAttention\) is coupled to pruned channels"):
        ChannelPruner(_TinyViT(), x, schedule=OneShotSchedule(0.5)).step(0)
    # The residual stream kept whole: the MLP's hidden channels go, and finalized == masked.
    model = _TinyViT()
    pruner = ChannelPruner(model, x, schedule=OneShotSchedule(0.5), ignored_layers=["embed", "attn", "head"])
    pruner.step(0)
    masked = model.eval()(x)
    small = pruner.finalize()
    assert small.mlp[0].out_features == 16
    assert (small(x) - masked).abs().max().item() <= 1e-5
    # Heads reshaped from a pruned projection: a clear refusal, with the masks left as they were.
    model = _TinyViT("heads")
    pruner = ChannelPruner(model, x, schedule=OneShotSchedule(0.5), ignored_layers=["embed", "head", "attn.out"])
    before = model.eval()(x)
    with pytest.raises(ValueError, match=r"could not choose channels in _TinyViT \(IndexError"):
        pruner.step(0)
    assert torch.equal(model(x), before)
    assert pruner.measured_sparsity() == 0.0
    with pytest.raises(ValueError, match="may not set"):
        ChannelPruner(_TinyViT(), x, schedule=OneShotSchedule(0.5), pruning_options={"pruning_ratio": 0.3})


def test_bert_from_a_config_is_refused_clearly():
    transformers = pytest.importorskip("transformers", reason="the huggingface extra is not installed")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, num_labels=2)  # fmt: skip
    model = transformers.BertForSequenceClassification(config).eval()
    x = {"input_ids": torch.randint(0, 40, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}
    with pytest.raises(ValueError, match="LayerNorm"):
        ChannelPruner(model, x, schedule=OneShotSchedule(0.5)).step(0)
    pruner = ChannelPruner(model, x, schedule=OneShotSchedule(0.5), ignored_layers=["bert.embeddings.word_embeddings"])
    pruner.step(0)
    with pytest.raises(ValueError, match="breaks the model's forward pass"):
        pruner.finalize()


TIMM_MODELS = {  # name -> (constructor options, input, outcome); built locally, no weights downloaded
    "resnet18": ({}, (2, 3, 64, 64), "exact"),
    "mobilenetv3_small_100": ({}, (2, 3, 64, 64), "exact"),
    "convnext_atto": ({}, (2, 3, 64, 64), r"'stages\.3\.blocks\.0\.norm' \(LayerNorm2d\) normalizes over the channels"),
    "vit_tiny_patch16_224": ({"img_size": 32}, (2, 3, 32, 32), r"'norm' \(LayerNorm\) normalizes over the channels"),
}


@pytest.mark.parametrize("name", sorted(TIMM_MODELS))
def test_timm_models_finalize_exactly_or_are_refused_clearly(name):
    """Issue #17's models as people have them: masked == finalized within 1e-5, or a refusal naming the layer."""
    timm = pytest.importorskip("timm", reason="timm (needs torchvision) is not installed")
    torch.manual_seed(0)
    options, shape, outcome = TIMM_MODELS[name]
    model = timm.create_model(name, pretrained=False, num_classes=5, **options).eval()
    example = torch.randn(*shape)
    dense = model(example).detach()
    pruner = ChannelPruner(model, example, schedule=OneShotSchedule(0.3))
    if outcome != "exact":  # channel-mixing norms: refused before any mask is set
        with pytest.raises(ValueError, match=outcome):
            pruner.step(0)
        torch.testing.assert_close(model(example), dense)
        assert pruner.measured_sparsity() == 0.0
        return
    pruner.step(0)
    masked = model(example).detach()
    small = pruner.finalize()
    assert (small(example) - masked).abs().max().item() <= 1e-5 * max(1.0, masked.abs().max().item())
    assert sum(p.numel() for p in small.parameters()) < 0.6 * pruner.dense_params  # 30% of channels removed
