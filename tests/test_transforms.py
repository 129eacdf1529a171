import importlib.util
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import sparsekit
from sparsekit import SparsekitError, zoo
from sparsekit.transforms import (
    STRBatchNorm2d,
    acceleration_rate,
    bn_channel_mask,
    convert_to_str_bn,
    imp,
    kernel_mask,
    layerwise_magnitude_masks,
    regroup,
)

from .helpers import assert_model_close, random_pattern


def check_blocks(result, blocks, min_rows, min_cols, row_multiple):
    flat = result.reshape(result.shape[0], -1).bool()
    union = torch.zeros_like(flat)
    seen_rows = set()
    for b in blocks:
        assert flat[b.rows[:, None], b.cols].all(), "a block is not dense"
        assert b.rows.numel() >= min_rows and b.cols.numel() >= min_cols
        n = b.rows.numel()
        assert n % row_multiple == 0 or n // row_multiple * row_multiple < min_rows
        assert not seen_rows & set(b.rows.tolist()), "blocks share rows"
        seen_rows |= set(b.rows.tolist())
        union[b.rows[:, None], b.cols] = True
    assert torch.equal(union, flat), "the mask is not exactly the union of its blocks"


@given(
    rows=st.integers(1, 96),
    cols=st.integers(1, 60),
    density=st.sampled_from([0.05, 0.3, 0.7]),
    kind=st.sampled_from(["random", "blocks", "mixed"]),
    parts=st.integers(1, 8),
    min_rows=st.integers(1, 20),
    min_cols=st.integers(1, 10),
    row_multiple=st.sampled_from([1, 8, 32]),
    seed=st.integers(0, 2**31),
)
def test_regroup_returns_dense_disjoint_blocks(
    rows, cols, density, kind, parts, min_rows, min_cols, row_multiple, seed
):
    gen = torch.Generator().manual_seed(seed)
    mask = random_pattern(rows, cols, kernel_area=1, kind=kind, density=density, gen=gen).float()
    result, blocks = regroup(
        mask, parts=parts, min_rows=min_rows, min_cols=min_cols, row_multiple=row_multiple
    )
    assert result.shape == mask.shape and result.dtype == mask.dtype
    if blocks:
        check_blocks(result, blocks, min_rows, min_cols, row_multiple)
    else:
        assert torch.equal(result, mask)  # nothing dense found: unchanged
    again, _ = regroup(
        mask, parts=parts, min_rows=min_rows, min_cols=min_cols, row_multiple=row_multiple
    )
    assert torch.equal(result, again)


@pytest.mark.parametrize("shape", [(256, 256, 3, 3), (512, 512, 3, 3)])
def test_regroup_on_80_percent_sparse_layers(shape):
    gen = torch.Generator().manual_seed(0)
    mask = (torch.rand(shape, generator=gen) < 0.2).float()
    result, blocks = regroup(mask)
    one_pass, _ = regroup(mask, max_rounds=1)
    kept = (result.bool() & mask.bool()).sum()
    assert kept >= (one_pass.bool() & mask.bool()).sum()
    assert 0.5 < result.mean() / mask.mean() < 1.5, "sparsity drifted far from the input's"
    assert len(blocks) >= 8 and all(b.rows.numel() % 32 == 0 or b.rows.numel() < 32 for b in blocks)


def test_regroup_recovers_planted_blocks():
    mask = torch.zeros(128, 300)
    rows = torch.randperm(128, generator=torch.Generator().manual_seed(1)).view(4, 32)
    for i, part in enumerate(rows):
        mask[part[:, None], torch.arange(60 * i, 60 * i + 60)] = 1
    result, blocks = regroup(mask, parts=4)
    assert torch.equal(result, mask) and len(blocks) == 4


def test_kernel_mask_keeps_whole_kernels():
    mask = torch.zeros(2, 2, 3, 3)
    mask[0, 0, :2] = 1  # 6 of 9 kept: stays, whole
    mask[1, 1, 0, 0] = 1  # 1 of 9: goes
    result = kernel_mask(mask)
    assert result[0, 0].all() and not result[1, 1].any() and result.sum() == 9
    assert kernel_mask(mask, min_kept=1 / 9).sum() == 18
    with pytest.raises(SparsekitError, match="Conv2d"):
        kernel_mask(torch.ones(3, 3))


def test_acceleration_rate():
    a = torch.zeros(4, 2, 3, 3)
    a[:2, 0] = 1  # 2 of 8 kernels
    b = torch.ones(2, 4, 1, 1)  # all 8 kernels
    ar = acceleration_rate({"a": a, "b": b}, {"a": 8, "b": (4, 4)})
    dense = 8 * 64 * 9 + 8 * 16 * 1
    assert ar == pytest.approx(dense / (2 * 64 * 9 + 8 * 16))


def str_bn_model():
    torch.manual_seed(0)
    model = convert_to_str_bn(zoo.create("resnet18")).eval()
    assert isinstance(model.layer1[0].bn1, STRBatchNorm2d)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, STRBatchNorm2d):
                m.weight.uniform_(-1, 1)
                m.threshold.fill_(0.0)  # threshold sigmoid(0) = 0.5: about half the channels die
    return zoo.calibrate_batchnorm(model, [torch.randn(8, 3, 32, 32) for _ in range(2)])


@pytest.mark.parametrize("momentum", [0.1, None])  # None: a cumulative average
def test_str_bn_keeps_running_statistics_as_batchnorm_does(momentum):
    bn = nn.BatchNorm2d(4, momentum=momentum).train()
    str_bn = STRBatchNorm2d.from_batchnorm(bn)
    for _ in range(3):
        x = torch.randn(5, 4, 3, 3) * 3 + 1
        bn(x), str_bn(x)
    assert torch.allclose(str_bn.running_mean, bn.running_mean)
    assert torch.allclose(str_bn.running_var, bn.running_var)
    assert bn.running_mean.mean() > 0.2  # the statistics did move: the check can fail


def test_str_bn_zero_channels_output_exactly_zero():
    model = str_bn_model()
    bn = model.layer2[0].bn1
    gamma, beta = bn.affine_params()
    dead = gamma == 0
    assert 0 < dead.sum() < dead.numel()
    y = bn(torch.randn(2, bn.num_features, 4, 4))
    assert torch.all(y[:, dead] == 0)
    assert torch.all(beta[dead] == 0)


def test_compiled_str_bn_network_is_exact():
    model = str_bn_model()
    masks = bn_channel_mask(model)
    assert "layer1.0.conv1.weight" in masks and "conv1.weight" in masks
    x = torch.randn(2, 3, 32, 32)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    assert_model_close(compiled(x), model(x))
    assert compiled.sparsekit_report.ok
    assert any(layer.flops_ratio < 0.75 for layer in compiled.sparsekit_report.layers)


@pytest.mark.parametrize("post", [None, "refill", "refill+", "regroup"])
def test_imp_reaches_the_sparsity_and_rewinds(post):
    model = zoo.create("wrn32_2")
    rewind = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    history = imp(model, calls.append, rounds=3, rate=0.5, post=post)
    assert len(history) == 3 and len(calls) == 3
    for r, masks in enumerate(history, 1):
        sparsity = 1 - sum(m.sum() for m in masks.values()) / sum(m.numel() for m in masks.values())
        if post in (None, "refill"):
            assert abs(sparsity - (1 - 0.5**r)) < 0.02, (r, float(sparsity))
        elif post == "refill+":
            assert sparsity < 1 - 0.5**r
    last = history[-1]
    if post in ("refill", "refill+"):
        for m in last.values():
            rows = m.view(m.shape[0], -1)
            assert torch.all(rows.all(1) | ~rows.bool().any(1))
    conv = model.layer2[0].conv1
    assert torch.equal(conv.weight_orig.detach(), rewind["layer2.0.conv1.weight"])
    assert torch.equal(conv.weight_mask, last["layer2.0.conv1.weight"])
    assert "conv1.weight" not in last


def test_layerwise_magnitude_masks_prune_each_layer_by_magnitude():
    model = zoo.create("resnet18")
    with torch.no_grad():  # one layer at a far smaller scale: a global threshold would empty it
        model.layer1[0].conv1.weight.mul_(1e-3)
    masks = layerwise_magnitude_masks(model, 0.8)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert sorted(masks) == sorted(f"{n}.weight" for n in convs[1:])  # the first conv stays dense
    for name, mask in masks.items():
        weight = model.get_parameter(name).detach().abs()
        assert mask.shape == weight.shape
        assert int(mask.sum()) == weight.numel() - round(0.8 * weight.numel()), name
        assert weight[mask.bool()].min() >= weight[~mask.bool()].max(), name  # kept the largest
    with pytest.raises(SparsekitError, match="sparsity"):
        layerwise_magnitude_masks(model, 1.0)


def test_imp_arguments():
    with pytest.raises(SparsekitError, match="post"):
        imp(nn.Sequential(nn.Conv2d(1, 1, 1)), lambda m: None, rounds=1, post="grow")
    with pytest.raises(SparsekitError, match="rate"):
        imp(zoo.create("wrn32_2"), lambda m: None, rounds=1, rate=1.0)


def test_structure_lth_example_runs():
    path = Path(__file__).resolve().parents[1] / "examples" / "structure_lth_digits.py"
    spec = importlib.util.spec_from_file_location("structure_lth_digits", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    results = example.main(["--rounds", "1", "--epochs", "1", "--width", "16"])
    assert results["dense_accuracy"] > 0.5
    for post in ("regroup", "refill"):
        assert results[post]["ok"] and results[post]["agree"] == 1.0
        assert results[post]["sparsity"] > 0.4
