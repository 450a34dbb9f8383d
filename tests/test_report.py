"""DisparityReport on hand-made numbers."""

import json
import math

import numpy as np
import pytest
import torch

from ceag_cooper import DisparityReport, GroupMetrics


def test_max_psi_pairwise_and_feasibility_by_hand():
    # Delta_g = [0.02, 0.10, -0.01]; Delta = 0.85 - 0.80 = 0.05; psi = [-0.03, 0.05, -0.06].
    report = DisparityReport(["a", "b", "c"], [0.90, 0.80, 0.70], [0.88, 0.70, 0.71], [10, 20, 30], 0.85, 0.80)
    assert report.psi.tolist() == pytest.approx([-0.03, 0.05, -0.06])
    assert report.max_psi == pytest.approx(0.05)
    assert report.psi_pw == pytest.approx(0.11)
    assert report.feasible is None
    assert report.is_feasible(0.0501)
    assert not report.is_feasible(0.049)
    assert DisparityReport(["a"], [0.9], [0.9], [1], 0.9, 0.9, tolerance=0.0).feasible is True
    # SE with Laplace smoothing: p = (20 * 0.8 + 1) / 22 = 17 / 22, sqrt(p (1 - p) / 20)
    se_b = ((17 / 22) * (5 / 22) / 20) ** 0.5
    assert report.by_group["b"] == pytest.approx(
        {"dense_accuracy": 0.8, "sparse_accuracy": 0.7, "gap": 0.1, "psi": 0.05, "count": 20.0, "standard_error": se_b}
    )
    assert "resolvable" not in report.by_group["b"]  # no tolerance: nothing to resolve against


def test_resolvability_and_max_psi_over_large_groups():
    """Issue #15 item 3: say which groups' psi the split can resolve at epsilon; judge the large ones."""
    # Group sizes 5, 400, 10000 at dense accuracy 0.5: SE = 0.5 / sqrt(n) roughly (Laplace barely moves 0.5).
    report = DisparityReport(["tiny", "mid", "big"], [0.5, 0.5, 0.5], [0.3, 0.45, 0.5], [5, 400, 10000], 0.5, 0.49,
                             tolerance=0.01)  # fmt: skip
    np.testing.assert_allclose(report.standard_error, 0.5 / np.sqrt([5, 400, 10000]), rtol=1e-12)
    assert report.resolvable.tolist() == [False, False, True]  # 0.5 / sqrt(400) = 0.025 > 0.01
    assert report.max_psi == pytest.approx(0.19)  # the tiny group
    assert report.max_psi_among(min_count=100) == pytest.approx(0.04)
    assert math.isnan(report.max_psi_among(min_count=10**6))
    table = report.to_markdown()
    assert "| tiny | 5 |" in table
    assert table.splitlines()[2].endswith(" no |")
    assert DisparityReport.from_dict(report.to_dict()).resolvable.tolist() == [False, False, True]


def test_binomial_cdf_against_a_naive_sum():
    from ceag_cooper.metrics.functional import binomial_cdf

    def naive(k, n, p):
        return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(min(k, n) + 1)) if k >= 0 else 0.0

    cases = [(3, 10, 0.2), (13, 100, 0.1), (0, 5, 0.3), (7, 630, 0.0355), (-2, 4, 0.5), (60, 50, 0.9), (49, 50, 0.9)]
    k, n, p = (torch.tensor([c[0] for c in cases]), torch.tensor([c[1] for c in cases]), [c[2] for c in cases])
    for (kk, nn, pp), value in zip(cases, [binomial_cdf(k[i], n[i], pp) for i, pp in enumerate(p)], strict=True):
        assert float(value) == pytest.approx(naive(kk, nn, pp), rel=1e-9, abs=1e-15), (kk, nn, pp)
    assert binomial_cdf(k[:3], n[:3], 0.3).shape == (3,)  # vectorized over entries
    assert binomial_cdf(torch.tensor(60), torch.tensor(50), 0.9).item() == 1.0
    with pytest.raises(ValueError, match="strictly between"):
        binomial_cdf(torch.tensor(1), torch.tensor(2), 1.0)


@pytest.mark.parametrize("loss", [0.1, 0.0355, -0.05])
def test_feasible_by_chance_matches_a_simulated_model_without_disparate_impact(loss):
    """The chance that a model changing each sample with probability |Delta| in every group meets eps, against a
    simulation of that model (binomial losses, or gains when Delta < 0, per group; Delta held fixed as documented).
    Group sizes off any lattice (n (p + eps) not whole) and a skewed case (small p)."""
    counts, eps = np.array([100, 137, 250, 412, 630] * 4), 0.03
    draws = np.random.default_rng(0).binomial(counts, abs(loss), size=(200_000, counts.size)) / counts
    psi = draws - loss if loss > 0 else -loss - draws  # gains: Delta_g = -gains / n, psi_g = Delta_g - Delta
    simulated = (psi.max(axis=1) <= eps + 1e-12).mean()
    dense, sparse = np.full(counts.size, 0.9), np.full(counts.size, 0.9 - loss)
    report = DisparityReport([str(g) for g in range(counts.size)], dense, sparse, counts, 0.9, 0.9 - loss,
                             tolerance=eps)  # fmt: skip
    assert 0.01 < simulated < 0.99  # informative: neither certain nor hopeless
    assert report.feasible_by_chance() == pytest.approx(simulated, abs=0.004)  # ~3 Monte Carlo SEs
    big = counts >= 400
    simulated_big = (psi[:, big].max(axis=1) <= eps + 1e-12).mean()
    assert report.feasible_by_chance(min_count=400) == pytest.approx(simulated_big, abs=0.004)
    assert report.feasible_by_chance(min_count=400) > report.feasible_by_chance()  # fewer, larger groups
    assert report.feasible_by_chance(tolerance=2 * eps) > report.feasible_by_chance()
    assert report.feasible_by_chance(min_count=10**6) == 1.0  # no group counted


def test_feasible_by_chance_edge_cases():
    same = DisparityReport(["a", "b"], [0.9, 0.8], [0.9, 0.8], [50, 50], 0.85, 0.85, tolerance=0.0)
    assert same.feasible_by_chance() == 1.0  # nothing changes: psi is 0 everywhere
    gain = DisparityReport(["a", "b"], [0.8, 0.8], [0.81, 0.81], [50, 50], 0.8, 0.81, tolerance=0.02)
    assert gain.feasible_by_chance() == 1.0  # a gain of 1 point can push psi to at most 1 point
    unknown = DisparityReport(["a"], [0.9], [0.8], [50], float("nan"), 0.8, tolerance=0.02)
    assert math.isnan(unknown.feasible_by_chance())
    with pytest.raises(ValueError, match="tolerance"):
        DisparityReport(["a"], [0.9], [0.8], [50], 0.9, 0.8).feasible_by_chance()


def test_never_feasible_groups_are_reported():
    report = DisparityReport(["a", "b"], [0.9, 0.8], [0.88, 0.7], [5, 5], 0.85, 0.79, never_feasible=["b"])
    assert report.overall["never_feasible"] == ["b"]
    assert report.to_dict()["overall"]["never_feasible"] == ["b"]
    assert "Groups never feasible during training: b." in report.to_markdown()
    assert "never feasible" not in DisparityReport(["a"], [0.9], [0.9], [1], 0.9, 0.9).to_markdown()
    assert "training: none." in DisparityReport(["a"], [0.9], [0.9], [1], 0.9, 0.9, never_feasible=[]).to_markdown()
    with pytest.raises(ValueError, match=r"not in `group_names`: \['z'\]"):
        DisparityReport(["a"], [0.9], [0.9], [1], 0.9, 0.9, never_feasible=["z"])


def test_absent_groups_are_left_out():
    report = DisparityReport(["a", "b", "c"], [0.9, 0.8, 0.7], [0.8, 0.0, 0.65], [5, 0, 5], 0.8, 0.7)
    assert math.isnan(report.psi[1])
    assert report.max_psi == pytest.approx(0.0)
    assert report.psi_pw == pytest.approx(0.05)
    assert report.to_dict()["by_group"]["b"]["psi"] is None
    assert "–" in report.to_markdown()


def test_from_metrics_exports_and_plot(tmp_path):
    def metrics(accs, acc):
        return GroupMetrics(
            torch.tensor(accs),
            torch.zeros(2),
            torch.tensor([3.0, 1.0]),
            torch.tensor(acc),
            torch.tensor(0.0),
            torch.tensor(4.0),
        )

    report = DisparityReport.from_metrics(
        metrics([1.0, 1.0], 1.0), metrics([1.0, 0.0], 0.75), group_names=["x", "y"], tolerance=0.01
    )
    assert report.max_psi == pytest.approx(0.75)
    assert report.feasible is False
    loaded = json.loads(report.to_json(tmp_path / "r.json"))
    assert loaded["overall"]["max_psi"] == pytest.approx(0.75)
    assert json.loads((tmp_path / "r.json").read_text()) == loaded
    text = report.to_markdown(title="train")
    assert "### train" in text
    assert "| y | 1 |" in text
    assert "max ψ = 75.00" in text
    path = report.plot(tmp_path / "r.png")
    assert path.stat().st_size > 1000
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_mismatched_lengths_are_rejected():
    with pytest.raises(ValueError, match="one entry per group"):
        DisparityReport(["a"], [0.9, 0.8], [0.9, 0.8], [1, 1], 0.9, 0.9)


def test_report_round_trips_and_speaks_fairlearn(tmp_path):
    """Issue #17 item 9: from_dict/from_json, to_frame, group_min/group_max/difference."""
    pd = pytest.importorskip("pandas")
    report = DisparityReport(["a", "b", "c"], [0.9, 0.8, 0.75], [0.88, 0.70, 0.70], [50, 30, 20], 0.83, 0.79,
                             tolerance=0.01, never_feasible=["b"])  # fmt: skip
    path = tmp_path / "r.json"
    report.to_json(path)
    for again in (DisparityReport.from_dict(report.to_dict()), DisparityReport.from_json(path),
                  DisparityReport.from_json(path.read_text())):  # fmt: skip
        assert again.to_dict() == report.to_dict()
    frame = report.to_frame()
    assert list(frame.index) == ["a", "b", "c"]
    # Independent oracle: a pandas group-by of per-sample predictions gives the same group accuracies.
    samples = pd.DataFrame({"group": ["a"] * 50 + ["b"] * 30 + ["c"] * 20,
                            "correct": [1] * 44 + [0] * 6 + [1] * 21 + [0] * 9 + [1] * 14 + [0] * 6})  # fmt: skip
    by_group = samples.groupby("group")["correct"].mean()
    assert frame["sparse_accuracy"].to_dict() == pytest.approx(by_group.to_dict())
    assert report.group_max() == pytest.approx(by_group.max())
    assert report.group_min() == pytest.approx(by_group.min())
    assert report.difference() == pytest.approx(by_group.max() - by_group.min())
    with pytest.raises(ValueError, match="not a DisparityReport dict"):
        DisparityReport.from_dict({"overall": {}})


def _png_size(path):
    import struct

    width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
    return width, height


def test_many_group_figures_show_the_largest_psi_sorted_and_stay_readable(tmp_path):
    """Issue #15 item 4: at 242 groups the old strip was 30 inches wide; now the top-k, horizontal."""
    from ceag_cooper.metrics import plot_comparison
    from ceag_cooper.metrics.plots import shown_groups

    rng = np.random.default_rng(0)
    groups = 242
    sparse = rng.uniform(0.5, 0.9, groups)
    report = DisparityReport([f"character {i}" for i in range(groups)], np.full(groups, 0.9), sparse,
                             np.full(groups, 15), 0.9, float(sparse.mean()), tolerance=0.02)  # fmt: skip
    shown = shown_groups(report.psi, top=30)
    assert shown.tolist() == np.argsort(-report.psi)[:30].tolist()  # the 30 largest, largest first
    width, height = _png_size(report.plot(tmp_path / "many.png"))
    assert width == 960
    assert 1000 < height < 1400
    small = DisparityReport(["a", "b"], [0.9, 0.8], [0.8, 0.7], [5, 5], 0.85, 0.75, tolerance=0.01)
    assert shown_groups(small.psi, top=30).tolist() == [0, 1]  # few groups: all, in their order
    other = DisparityReport(report.group_names, report.dense_accuracy, np.clip(sparse + 0.05, 0, 1),
                            report.count, 0.9, float(sparse.mean()) + 0.05, tolerance=0.02)  # fmt: skip
    width, height = _png_size(plot_comparison({"NFT": report, "CEAG": other}, tmp_path / "cmp.png"))
    assert width == 960
    assert height < 2200
    with pytest.raises(ValueError, match="top"):
        shown_groups(report.psi, top=0)


def test_per_sample_predictions_rebuild_the_group_accuracies_with_pandas():
    """Issue #17 item 9: export predictions with group ids, so fairlearn's MetricFrame can be built from a run."""
    pd = pytest.importorskip("pandas")
    from ceag_cooper import GroupSpec, evaluate_groups
    from ceag_cooper.metrics import predict_groups

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    spec = GroupSpec([2, 3], mode="intersectional", attribute_names=("a", "b"))
    data = [(torch.randn(20, 5), torch.randint(0, 3, (20,)), torch.stack([torch.randint(0, 2, (20,)),
             torch.randint(0, 3, (20,))], dim=1)) for _ in range(3)]  # fmt: skip
    p = predict_groups(model, data, groups=spec)
    frame = pd.DataFrame({"correct": p["y_true"] == p["y_pred"], "group": p["group_id"], "name": p["group_name"]})
    by_group = frame.groupby("group")["correct"].mean()
    metrics = evaluate_groups(model, data, groups=spec)
    for g, accuracy in by_group.items():
        assert metrics.group_accuracy[g].item() == pytest.approx(accuracy)
    assert len(p["y_true"]) == 60
    assert frame.groupby("name")["group"].nunique().max() == 1  # names and ids agree
    with pytest.raises(ValueError, match="no batch"):
        predict_groups(model, [], groups=spec)
