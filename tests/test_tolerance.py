"""The one tolerance table and its bound: the dense references' precision follows the kernels'
(TF32 off for cuDNN while torch's float32 matmul precision is "highest", left as it was
otherwise); the bound grows with the reductions behind a result, yet still fails a wrong weight,
and holds a deep network's correct output."""

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import SparseConv2d, SparsekitError, pack, tolerance, transforms, zoo

from .helpers import assert_model_close, dense_masked, random_pattern


@pytest.mark.parametrize("matmul, cudnn_tf32", [("highest", False), ("high", True)])
def test_references_use_the_kernels_fp32_precision(matmul, cudnn_tf32):
    previous = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.allow_tf32 = True  # torch's default
        with tolerance.matching_precision():
            assert torch.backends.cudnn.allow_tf32 is cudnn_tf32
        assert torch.backends.cudnn.allow_tf32 is True
    finally:
        torch.set_float32_matmul_precision(previous[0])
        torch.backends.cudnn.allow_tf32 = previous[1]


@pytest.mark.parametrize("key", [torch.float64, torch.float32, "tf32", torch.float16])
def test_a_layer_of_up_to_the_reference_reduction_keeps_the_tables_bound(key):
    expected = torch.tensor([[-3.0, 2.0], [1.0, 0.5]])
    atol, rtol = tolerance.TOLERANCES[key]
    table = atol + rtol * 3.0
    assert tolerance.bound(expected, key) == pytest.approx(table)
    for small in ([1], [tolerance.REFERENCE_REDUCTION]):
        assert tolerance.bound(expected, key, reductions=small) == pytest.approx(table)


def test_the_bound_grows_as_the_root_of_the_summed_reductions():
    k0 = tolerance.REFERENCE_REDUCTION
    assert tolerance.growth([4 * k0]) == pytest.approx(2.0)  # one layer: sqrt(K / K0)
    assert tolerance.growth([k0] * 9) == pytest.approx(3.0)  # a model: sqrt(depth) ...
    assert tolerance.growth([10] * 9) == pytest.approx(3.0)  # ... small layers counting as K0
    assert tolerance.growth([4 * k0, k0]) == pytest.approx(5**0.5)
    expected = torch.randn(4, 8)
    assert tolerance.bound(expected, reductions=[9 * k0]) == pytest.approx(
        3 * tolerance.bound(expected)
    )
    assert tolerance.reduction((64, 32, 3, 3)) == 288 and tolerance.reduction((10, 2048)) == 2048


@pytest.mark.parametrize("in_channels", [512, 2048])  # growth 1 and 2
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_one_wrong_weight_fails_a_layers_scaled_bound(backend, in_channels):
    """A kept weight of median magnitude skipped (a kernel that drops one index) fails verify's
    per-layer bound in fp32, however big the reduction (50-250 times the bound here); in fp16 and
    bf16 one weight's share of the output can fall under even the table's bound."""
    conv = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
    pattern = random_pattern(
        64, in_channels * 9, kernel_area=9, kind="kernel", density=0.2, gen=None
    )
    with torch.no_grad():
        conv.weight.mul_(pattern.view(conv.weight.shape))
    weight = conv.weight.detach()
    layer = SparseConv2d.from_weight(
        weight, padding=1, backend=backend, packed=pack(weight, structure="kernel")
    )
    compiled, reference = nn.Sequential(layer), nn.Sequential(conv)
    x = torch.randn(2, in_channels, 6, 6).relu()
    right = sparsekit.verify(compiled, reference, x, measure=False)
    assert right.ok
    with torch.inference_mode():
        expected = conv(x)
    assert right.layers[0].bound == pytest.approx(
        tolerance.growth([in_channels * 9]) * tolerance.bound(expected)
    )

    kept = layer.values.nonzero().flatten()
    with torch.no_grad():
        layer.values[kept[layer.values[kept].abs().argsort()[kept.numel() // 2]]] = 0
    layer.ready()
    wrong = sparsekit.verify(compiled, reference, x, measure=False)
    assert not wrong.layers[0].ok and not wrong.ok
    with pytest.raises(SparsekitError, match="layer '0' differs"):
        wrong.raise_on_mismatch()


def test_a_resnet_50_under_80_percent_channel_masks_passes_its_scaled_bound():
    """The zoo's ResNet-50 at 64x64, IMP-Refill channel masks at 80% on every conv but the first
    (52 layers): its end-to-end error, about a sixth of the table's bound, is held to the table's
    bound times sqrt(52) (see tolerance.growth), and reported (pytest -s)."""
    model = zoo.create("resnet50").eval()
    masks = transforms.refill_masks(model, transforms.layerwise_magnitude_masks(model, 0.8))
    zoo.calibrate_batchnorm(model, [torch.randn(8, 3, 64, 64) for _ in range(2)], masks)
    x = torch.randn(4, 3, 64, 64)
    compiled = sparsekit.compile(
        model, masks, x, structure="channel", measure=False, progress=False
    )
    report = compiled.sparsekit_report
    assert report.ok and report.discriminating and len(report.layers) == len(masks) == 52

    with torch.inference_mode():
        actual, expected = compiled(x), dense_masked(model, masks)(x)
    reductions = [tolerance.reduction(mask.shape) for mask in masks.values()]
    assert report.bound == pytest.approx(tolerance.bound(expected, reductions=reductions))
    assert_model_close(actual, expected, reductions)
    error = tolerance.max_error(actual, expected)
    print(
        f"ResNet-50 end to end: {error / tolerance.bound(expected):.1%} of the table's bound, "
        f"{error / report.bound:.1%} of the scaled one (growth {tolerance.growth(reductions):.2f})"
    )
