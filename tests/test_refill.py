import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sparsekit import SparsekitError
from sparsekit.transforms import refill


@given(
    out=st.integers(1, 40),
    cin=st.integers(1, 8),
    k=st.sampled_from([1, 3]),
    density=st.floats(0.0, 1.0),
    extra=st.sampled_from([0.0, 0.25, 1.0]),
    criterion=st.sampled_from(["remain", "l1"]),
    seed=st.integers(0, 2**31),
)
def test_refill_keeps_the_intended_number_of_whole_channels(
    out, cin, k, density, extra, criterion, seed
):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out, cin, k, k, generator=gen)
    mask = (torch.rand(weight.shape, generator=gen) < density).float()
    result = refill(weight, mask, criterion=criterion, extra=extra)
    rows = result.view(out, -1)
    assert result.dtype == mask.dtype and result.shape == mask.shape
    assert torch.all(rows.all(1) | ~rows.bool().any(1)), "not purely channel-wise"
    channels = mask.sum().item() / rows.shape[1]
    expected = min(out, max(round(channels + (out - channels) * extra), 1 if mask.any() else 0))
    assert int(rows.any(1).sum()) == expected
    assert torch.equal(result, refill(weight, mask.clone(), criterion=criterion, extra=extra))


def test_refill_ranks_channels_and_breaks_ties_deterministically():
    weight = torch.ones(4, 1, 2, 2)
    weight[2] *= 3  # larger L1: wins the tie on kept count
    mask = torch.tensor(
        [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0], [1, 0, 0, 0]], dtype=torch.float
    ).view(4, 1, 2, 2)
    kept = refill(weight, mask).view(4, -1).any(1)  # 7 kept / 4 per row -> 2 channels
    assert kept.tolist() == [False, True, True, False]
    l1_kept = refill(weight, mask, criterion="l1").view(4, -1).any(1)
    assert l1_kept.tolist() == [False, True, True, False]


def test_refill_arguments():
    w, m = torch.randn(2, 2), torch.ones(2, 2)
    with pytest.raises(SparsekitError, match="criterion"):
        refill(w, m, criterion="saliency")
    with pytest.raises(SparsekitError, match="extra"):
        refill(w, m, extra=2.0)
    with pytest.raises(SparsekitError, match="shape"):
        refill(w, torch.ones(3))
