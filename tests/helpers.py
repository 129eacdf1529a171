"""Random weights, masks, patterns and models for the tests, and the checks they share."""

import copy

import torch
import torch.nn.functional as F
from torch import nn

from sparsekit import backends, pack, timing, tolerance, unpack, zoo

# Backends that run on this machine's CPU without an interpreter (the Triton kernels, which run
# on CPU only under TRITON_INTERPRET=1 and slowly, have tests of their own).
CPU_BACKENDS = [b.name for b in backends.REGISTRY.values() if "cpu" in b.devices]
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def backend_dtypes(backend: str) -> list[torch.dtype]:
    return [d for d in DTYPES if d in backends.get(backend).dtypes]


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    """``actual`` (of ``dtype``) within the one tolerance table's bound of ``expected``, an fp64
    result computed from the same (rounded) inputs."""
    assert actual.dtype == dtype
    error, bound = tolerance.max_error(actual, expected), tolerance.bound(expected, dtype)
    assert error <= bound, f"max error {error:.3e} > {bound:.3e}"


def random_pattern(rows: int, cols: int, *, kernel_area: int, kind: str, density: float, gen):
    """A bool [rows, cols] pattern of a given kind: random, channel, kernel, blocks or mixed."""
    if kind == "random":
        return torch.rand(rows, cols, generator=gen) < density
    if kind == "channel":
        keep_rows = torch.rand(rows, 1, generator=gen) < density
        keep_cols = torch.rand(1, cols, generator=gen) < max(density, 0.5)
        return keep_rows & keep_cols
    if kind == "kernel":
        kernels = torch.rand(rows, cols // kernel_area, 1, generator=gen) < density
        return kernels.expand(-1, -1, kernel_area).reshape(rows, cols).clone()
    pattern = torch.zeros(rows, cols, dtype=torch.bool)
    order = torch.randperm(rows, generator=gen)
    parts = order.chunk(max(1, min(rows, 4)))
    for part in parts:  # disjoint row groups, each with its own dense column set
        cols_kept = torch.rand(cols, generator=gen) < density
        pattern[part[:, None], cols_kept.nonzero().flatten()] = True
    if kind == "mixed":  # blocks plus scattered non-zeros outside them
        pattern |= torch.rand(rows, cols, generator=gen) < density / 10
    return pattern


def structured_masks(model, seed: int = 0) -> dict:
    """{param name: bool mask} for every Conv2d/Linear but the first: half the output rows
    pruned, the kept rows in groups of 8 sharing 30% of the input channels (whole kernels; at
    least one, so that no kept row goes dark)."""
    gen = torch.Generator().manual_seed(seed)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks = {}
    for name, module in layers[1:]:
        w = module.weight
        rows = torch.randperm(w.shape[0], generator=gen)[: max(1, w.shape[0] // 2)]
        mask = torch.zeros_like(w, dtype=torch.bool)
        for part in rows.chunk(max(1, rows.numel() // 8)):
            channels = torch.rand((w.shape[1],) + (1,) * (w.dim() - 2), generator=gen) < 0.3
            channels.view(-1)[torch.randint(w.shape[1], (1,), generator=gen)] = True
            mask[part] = channels.expand(w[0].shape)
        masks[f"{name}.weight"] = mask
    return masks


def calibrated_zoo_model(name: str, batches: int = 2, batch: int = 8):
    """(zoo model, ``structured_masks`` of it): a fresh model whose BatchNorm statistics are
    calibrated under the masks on random inputs, so that its masked output depends on its input."""
    model = zoo.create(name).eval()
    masks = structured_masks(model)
    inputs = [torch.randn(batch, *zoo.INPUT_SHAPES[name]) for _ in range(batches)]
    return zoo.calibrate_batchnorm(model, inputs, masks), masks


def dense_masked(model, masks: dict):
    """Independent reference: a copy of the model with its weights multiplied by the masks."""
    reference = copy.deepcopy(model).eval()
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for key, mask in masks.items():
            params[key].mul_(mask.to(params[key].dtype))
    return reference


def assert_model_close(actual: torch.Tensor, expected: torch.Tensor, reductions=()) -> None:
    """compile()'s tolerance (``reductions``: of the layers behind the output, as verify() passes
    them; none, the table's bound), on a reference whose output spreads across the batch far above
    it (else a wrong kernel could pass: the check itself is checked)."""
    error = tolerance.max_error(actual, expected)
    bound = tolerance.bound(expected, reductions=reductions)
    spread = tolerance.batch_spread(expected)
    assert spread is not None and spread >= tolerance.MIN_SPREAD * bound, (
        f"degenerate reference: its output spreads {spread} across the batch, bound {bound:.3e}"
    )
    assert error <= bound, f"max error {error:.3e} > {bound:.3e}"


LAYOUTS = ["contiguous", "channels_last", "strided"]


def conv_input(shape, dtype, layout, gen=None):
    n, c, h, w = shape
    if layout == "strided":  # every other column of a wider tensor
        return torch.randn(n, c, h, 2 * w, generator=gen).to(dtype)[..., ::2]
    x = torch.randn(shape, generator=gen).to(dtype)
    return x.to(memory_format=torch.channels_last) if layout == "channels_last" else x


def pack_for(backend: str | None, weight, mask=None, structure="auto", groups=1):
    """``pack`` with ``structure``, else with whole kernels (the kernel planner's plans), else in
    one dense block (which every backend runs): the first that ``backend`` takes."""
    for plan in (structure, "kernel"):
        packed = pack(weight, mask, structure=plan, groups=groups)
        if backend is None or backends.get(backend).supports(packed):
            return packed
    return pack(weight, mask, structure="dense", groups=groups)


def packed_conv(
    cout,
    cin,
    kernel,
    groups,
    dtype,
    structure="auto",
    density=0.4,
    kind="mixed",
    gen=None,
    backend=None,
):
    weight = torch.randn(cout, cin // groups, *kernel, generator=gen).to(dtype)
    pattern = random_pattern(
        cout,
        weight[0].numel(),
        kernel_area=kernel[0] * kernel[1],
        kind=kind,
        density=density,
        gen=gen,
    )
    return pack_for(backend, weight, pattern.view(weight.shape), structure, groups)


def expected_conv(x, packed, bias, stride, padding, dilation, relu):
    y = F.conv2d(
        x.double(),
        unpack(packed).double(),
        None if bias is None else bias.double(),
        stride,
        padding,
        dilation,
        packed.groups,
    )
    return y.relu() if relu else y


def expected_linear(x, packed, bias, relu):
    y = F.linear(x.double(), unpack(packed).double(), None if bias is None else bias.double())
    return y.relu() if relu else y


CONV_CASES = [
    # (batch, cin, cout, hw, kernel, stride, padding, dilation, groups)
    (1, 1, 1, (1, 1), (1, 1), 1, 0, 1, 1),
    (2, 3, 7, (7, 7), (3, 3), 1, 1, 1, 1),
    (1, 33, 33, (5, 9), (3, 3), 2, 1, 1, 1),
    (3, 8, 6, (9, 7), (3, 3), 1, 2, 2, 2),
    (2, 7, 7, (7, 7), (3, 3), 1, 1, 1, 7),  # depthwise
    (1, 16, 100, (3, 3), (1, 1), 1, 0, 1, 1),
    (2, 6, 9, (11, 10), (5, 2), 2, 2, 1, 3),
    (1, 4, 8, (8, 8), (3, 3), 2, 0, 2, 1),
    (2, 1, 5, (6, 6), (3, 3), 1, 1, 1, 1),  # one input channel: its strides say its format
]


def timed_by(monkeypatch, seconds, interval=0.0):
    """compile's timing made deterministic: a call of ``layer`` takes ``seconds(layer)``, and a
    comparison's confidence interval spans ``interval`` either side of its ratio."""
    monkeypatch.setattr(timing, "median_seconds", lambda layer, *a, **k: seconds(layer))
    monkeypatch.setattr(timing, "one_call_seconds", lambda layer, *a, **k: seconds(layer))

    def compare(candidate, baseline, *args, **kwargs):
        ratio = seconds(candidate) / seconds(baseline)
        return timing.Comparison(
            ratio,
            ratio - interval,
            ratio + interval,
            timing.MIN_ROUNDS,
            seconds(candidate),
            seconds(baseline),
        )

    monkeypatch.setattr(timing, "compare", compare)
