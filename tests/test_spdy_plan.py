"""sparsekit.plan and its parts: levels, timing tables (cached), the error database (least-squares
reconstruction), the calibration score and the coefficient search."""

import copy
import itertools
import json

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import spdy
from sparsekit.errors import SparsekitError
from sparsekit.spdy import database, timings
from sparsekit.spdy.search import Scorer, costs_of, search

LEVELS = spdy.geometric_levels(4)  # 0, 0.4, ~0.83, 0.95


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 96, 3, padding=1),
        nn.BatchNorm2d(96),
        nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1, groups=3),
        nn.BatchNorm2d(96),
        nn.ReLU(),
        nn.Conv2d(96, 96, 3, padding=1),
        nn.BatchNorm2d(96),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(96, 10),
    )
    sparsekit.zoo.calibrate_batchnorm(model, [torch.randn(16, 3, 16, 16) for _ in range(2)])
    return model.eval()


def test_levels_and_their_masks():
    assert LEVELS[0] == 0 and LEVELS[1] == pytest.approx(0.4) and LEVELS[-1] == pytest.approx(0.95)
    densities = [1 - s for s in spdy.DEFAULT_LEVELS[1:]]
    ratios = [b / a for a, b in zip(densities, densities[1:])]
    assert (
        len(spdy.DEFAULT_LEVELS) == 12 and max(ratios) - min(ratios) < 1e-9
    )  # geometric in density
    weight = torch.randn(16, 8, 3, 3)
    assert spdy.level_mask(weight, 0.0).all()
    plain = spdy.level_mask(weight, 0.75)
    assert plain.sum() == round(0.25 * weight.numel())
    assert weight.abs()[plain.bool()].min() >= weight.abs()[~plain.bool()].max()
    channels = spdy.level_mask(weight, 0.75, "refill").flatten(1)
    assert ((channels.sum(1) == 0) | (channels.sum(1) == channels.shape[1])).all() and channels.sum(
        1
    ).gt(0).sum() == 4
    kernels = spdy.level_mask(weight, 0.75, "kernel").flatten(2)
    assert ((kernels.sum(2) == 0) | (kernels.sum(2) == 9)).all() and kernels.sum() == 9 * 32
    with pytest.raises(SparsekitError, match="increasing sparsities"):
        spdy.timing_table(small_cnn(), torch.randn(2, 3, 16, 16), levels=(0.5, 0.9))
    with pytest.raises(SparsekitError, match="transform"):
        spdy.timing_table(small_cnn(), torch.randn(2, 3, 16, 16), levels=LEVELS, transform="prune")


def test_timing_table_times_what_compile_builds_and_is_cached(tmp_path, monkeypatch, flop_timing):
    model, x = small_cnn(), torch.randn(8, 3, 16, 16)
    cache = tmp_path / "tables.json"
    table = spdy.timing_table(model, x, LEVELS, cache=cache, min_run_time=0.01)
    assert table.layers == ["3", "6", "9"] and table.levels == list(LEVELS)
    assert torch.tensor(table.seconds).shape == (3, 4) and (torch.tensor(table.seconds) > 0).all()
    for row, plans in zip(table.seconds, table.plans):
        assert plans[0] == "dense/dense"
        # a level that stays dense takes the dense time; a packed one beat it by compile's margin
        assert all(t == row[0] if p == "dense/dense" else t < row[0] for t, p in zip(row, plans))
    assert any(p != "dense/dense" for plans in table.plans for p in plans)
    assert table.key["layers"]["3"] == [8, 32, 16, 16] and table.key["dtype"] == "float32"

    def no_measuring(*args, **kwargs):
        raise AssertionError("a cached table was measured again")

    monkeypatch.setattr(timings, "choose", no_measuring)
    assert spdy.timing_table(model, x, LEVELS, cache=cache) == table
    with pytest.raises(AssertionError, match="measured again"):  # another key: another table
        spdy.timing_table(model, x[:4], LEVELS, cache=cache)
    with pytest.raises(AssertionError, match="measured again"):  # so is another memory format
        spdy.timing_table(
            model, x.contiguous(memory_format=torch.channels_last), LEVELS, cache=cache
        )
    assert table.key["formats"]["3"] == "nchw"
    assert len(json.loads(cache.read_text())["tables"]) == 1


def test_reconstruction_fits_the_dense_outputs_better_than_masking():
    model = small_cnn()
    calib = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    db = spdy.ErrorDatabase(model, ["6", "9"], LEVELS, calib_inputs=calib, reconstruct=True)
    plain = spdy.ErrorDatabase(model, ["6", "9"], LEVELS)
    seen = sparsekit.compiler.recording.record_inputs(model, ["6", "9"], (calib[0],))
    for name in ("6", "9"):  # a grouped conv and a plain one
        conv = model.get_submodule(name)
        for level in (1, 2, 3):
            fitted, masked = db.weight(name, level), plain.weight(name, level)
            assert (fitted[~plain.masks[name][level]] == 0).all()
            with torch.no_grad():
                errors = [
                    (conv._conv_forward(seen[name], w, conv.bias) - conv(seen[name])).norm()
                    for w in (fitted, masked)
                ]
            assert errors[0] < 0.9 * errors[1]
        assert torch.equal(db.weight(name, 0), conv.weight)


def test_recalibrated_batchnorm_follows_the_pruned_layers_and_lowers_the_loss():
    model = small_cnn()
    calib = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    with pytest.raises(SparsekitError, match="calibration inputs are needed"):
        spdy.ErrorDatabase(model, ["3"], LEVELS, recalibrate_batchnorm=True)
    db = spdy.ErrorDatabase(
        model, ["3", "6", "9"], LEVELS, "refill", calib_inputs=calib, recalibrate_batchnorm=True
    )
    plain = spdy.ErrorDatabase(model, ["3", "6", "9"], LEVELS, "refill")
    stitched = db.stitched([2, 2, 2])
    assert not stitched.training and stitched[4].momentum == model[4].momentum
    expected = copy.deepcopy(plain.stitched([2, 2, 2]))
    sparsekit.zoo.calibrate_batchnorm(expected, calib)  # what the stitched model's BatchNorms saw
    for norm, reference in ((stitched[i], expected[i]) for i in (1, 4, 7, 10)):
        assert torch.allclose(norm.running_mean, reference.running_mean, atol=1e-5)
        assert torch.allclose(norm.running_var, reference.running_var, rtol=1e-4)
    assert not torch.allclose(stitched[4].running_mean, model[4].running_mean)
    pruned = stitched[3].weight.flatten(1).abs().sum(1) == 0  # refilled: whole channels gone
    assert pruned.any() and torch.allclose(
        stitched[4].running_mean[pruned], stitched[3].bias[pruned], atol=1e-6
    )
    assert (
        stitched[4].running_var[pruned] < 1e-6
    ).all()  # a pruned channel is its bias, a constant
    assert Scorer(db, model, calib)([2, 2, 2]) < Scorer(plain, model, calib)([2, 2, 2])


def test_gram_matrices_are_those_of_the_im2col_rows():
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2, groups=2)
    x = torch.randn(2, 4, 7, 7)
    cols = torch.nn.functional.unfold(x.double(), 3, padding=1, stride=2)  # [2, 36, L]
    for g in range(2):
        rows = cols[:, 18 * g : 18 * (g + 1)].transpose(1, 2).reshape(-1, 18)
        assert torch.allclose(database.gram(conv, x)[g], rows.T @ rows)
    linear = nn.Linear(5, 3)
    y = torch.randn(4, 2, 5)
    assert torch.allclose(
        database.gram(linear, y)[0], y.double().reshape(-1, 5).T @ y.double().reshape(-1, 5)
    )


def test_the_score_is_zero_dense_and_grows_with_sparsity_and_uses_labels():
    model = small_cnn()
    db = spdy.ErrorDatabase(model, ["3", "6", "9"], LEVELS)
    batches = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    score = Scorer(db, model, batches)
    assert score([0, 0, 0]) == pytest.approx(0, abs=1e-9)
    assert 0 < score([1, 1, 1]) < score([3, 3, 3])
    with torch.no_grad():
        labels = [model(b).argmax(1) for b in batches]
    labelled = Scorer(db, model, list(zip(batches, labels)))
    with torch.no_grad():
        expected = (
            sum(nn.functional.cross_entropy(model(b), y) for b, y in zip(batches, labels)) / 2
        )
    assert labelled([0, 0, 0]) == pytest.approx(float(expected))
    assert db.stitched([0, 0, 0]) is db.stitched([3, 3, 3])  # one working copy, updated in place
    assert torch.equal(
        db.stitched([0, 0, 0]).get_submodule("3").weight, model.get_submodule("3").weight
    )


def test_search_keeps_to_the_budget_and_improves_on_its_draws():
    times = [[4.0, 3.0, 2.0, 1.0]] * 6
    weights = [
        1.0,
        8.0,
        1.0,
        8.0,
        1.0,
        8.0,
    ]  # the true sensitivity: the odd layers 8x the even ones

    def score(choice):
        return sum(w * (i / 3) ** 2 for w, i in zip(weights, choice))

    tried = search(times, score, 15.5, draws=5, steps=40, seed=0)
    assert len(tried) == 45 and all(c.seconds <= 15.5 for c in tried)
    assert all(c.loss == score(c.choice) for c in tried)
    optimum = min(
        score(c) for c in itertools.product(range(4), repeat=6) if sum(4 - i for i in c) <= 15.5
    )
    best = min(c.loss for c in tried)
    assert (
        optimum <= best < min(c.loss for c in tried[:5])
    )  # the local steps improved on the random draws
    assert [c.choice for c in search(times, score, 15.5, draws=5, steps=3, seed=0)] == [
        c.choice for c in tried[:8]
    ]
    assert costs_of([2.0], 3).tolist() == [[0.0, 0.5, 2.0]]


def test_plan_meets_the_target_measured_and_compiles_the_masks(scripted_speedups, flop_timing):
    # the search's best choice measures short of the target, the next one meets it
    scripted_speedups.script = [1.1, 1.3]
    model = small_cnn().to(
        memory_format=torch.channels_last
    )  # dense is timed in its faster format anyway
    x = torch.randn(16, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    calib = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    masks, compiled, report = sparsekit.plan(model, x, 1.25, calib, levels=LEVELS, draws=8, steps=4)
    assert [r["speedup"] for r in report.rounds] == [1.1, 1.3] and report.speedup == 1.3
    assert report.rounds[1]["budget_ms"] < report.rounds[0]["budget_ms"]  # by the shortfall
    assert report.dense_format in ("nchw", "channels_last")
    assert set(masks) == {"3.weight", "6.weight", "9.weight"}
    assert [1 - float(masks[f"{n}.weight"].mean()) for n in report.layers] == pytest.approx(
        report.sparsities, abs=0.01
    )
    reference = sparsekit.compiler.reference.dense_masked_copy(
        model, sparsekit.masks.collect_masks(model, masks)
    )
    with torch.no_grad():
        assert torch.allclose(compiled(x), reference(x), atol=1e-4, rtol=1e-4)
    assert compiled.sparsekit_report.ok
    assert report.loss == report.rounds[-1]["loss"]
    assert report.rounds[0]["loss"] == min(c["loss"] for c in report.candidates)
    assert (
        "measured speedup" in str(report) and len(report.candidates) >= 12
    )  # 8 draws, 4 steps, maybe more


def test_plan_gives_up_after_its_rounds_saying_what_it_measured(scripted_speedups, flop_timing):
    scripted_speedups.script = [1.05]
    model = small_cnn().to(memory_format=torch.channels_last)  # as above: the table's figures
    x = torch.randn(16, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    calib = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    with pytest.raises(SparsekitError, match=r"1.25x was not met: measured 1.05x, 1.05x over 2"):
        sparsekit.plan(model, x, 1.25, calib, levels=LEVELS, draws=8, steps=4, rounds=2)
    assert scripted_speedups.calls == 2


def test_plan_says_when_the_target_is_out_of_reach():
    model = small_cnn()
    with pytest.raises(SparsekitError, match=r"out of reach: .* at most"):
        sparsekit.plan(
            model, torch.randn(4, 3, 16, 16), 50.0, [torch.randn(4, 3, 16, 16)], levels=LEVELS
        )
    with pytest.raises(SparsekitError, match="number > 1"):
        sparsekit.plan(model, torch.randn(4, 3, 16, 16), 0.5, [])
    with pytest.raises(SparsekitError, match="eval"):
        sparsekit.plan(model.train(), torch.randn(4, 3, 16, 16), 2.0, [])
