"""Random weights, masks and patterns for the tests."""

import torch

# (atol, rtol) per dtype against an fp64 reference computed from the same (rounded) inputs:
# fp32 accumulation error plus one rounding of the output to the dtype.
TOLERANCES = {
    torch.float32: (1e-4, 1e-4),
    torch.bfloat16: (2e-2, 1.6e-2),
    torch.float16: (2e-3, 2e-3),
}


def assert_matches(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    atol, rtol = TOLERANCES[dtype]
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


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
    pruned, the kept rows in groups of 8 sharing 30% of the input channels (whole kernels)."""
    from torch import nn

    gen = torch.Generator().manual_seed(seed)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    masks = {}
    for name, module in layers[1:]:
        w = module.weight
        rows = torch.randperm(w.shape[0], generator=gen)[: max(1, w.shape[0] // 2)]
        mask = torch.zeros_like(w, dtype=torch.bool)
        for part in rows.chunk(max(1, rows.numel() // 8)):
            channels = torch.rand((w.shape[1],) + (1,) * (w.dim() - 2), generator=gen) < 0.3
            mask[part] = channels.expand(w[0].shape)
        masks[f"{name}.weight"] = mask
    return masks


def dense_masked(model, masks: dict):
    """Independent reference: a copy of the model with its weights multiplied by the masks."""
    import copy

    reference = copy.deepcopy(model).eval()
    params = dict(reference.named_parameters())
    with torch.no_grad():
        for key, mask in masks.items():
            params[key].mul_(mask.to(params[key].dtype))
    return reference


def assert_model_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """The compile() tolerance in fp32: max |error| <= 1e-4 * max |reference| + 1e-5."""
    bound = 1e-4 * expected.abs().max().item() + 1e-5
    error = (actual - expected).abs().max().item()
    assert error <= bound, f"max error {error:.3e} > {bound:.3e}"
