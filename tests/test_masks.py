import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import sparsekit
from sparsekit import SparsekitError
from sparsekit.masks import collect_masks, live_masks


def small_model():
    return nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 3))


def test_every_dict_form_gives_the_same_masks():
    model = small_model()
    w, b = torch.rand(4, 2, 3, 3) < 0.5, torch.tensor([1, 0, 1, 1])
    forms = [
        {"0.weight": w, "0.bias": b},
        {"0": {"weight": w, "bias": b}},
        {
            "0.weight_mask": w,
            "0.bias_mask": b,
            "0.weight_orig": torch.zeros(1),
            "1.running_mean": torch.zeros(4),
        },
    ]
    for form in forms:
        found = collect_masks(model, form)
        assert set(found) == {"0"} and torch.equal(found["0"]["weight"], w)
        assert torch.equal(found["0"]["bias"], b)
    assert torch.equal(
        collect_masks(model, {"3": torch.ones(3, 4)})["3"]["weight"], torch.ones(3, 4)
    )


def test_live_prune_masks_are_found_and_nothing_changes():
    model = small_model()
    prune.random_unstructured(model[0], "weight", 0.5)
    prune.l1_unstructured(model[3], "bias", 1)
    found = collect_masks(model, None)
    assert torch.equal(found["0"]["weight"], model[0].weight_mask)
    assert torch.equal(found["3"]["bias"], model[3].bias_mask)
    assert prune.is_pruned(model)
    assert live_masks(small_model()) == {}


@pytest.mark.parametrize(
    ("mask", "message"),
    [
        ({"0.weights": torch.ones(4, 2, 3, 3)}, "names no parameter"),
        ({"1": torch.ones(4)}, "BatchNorm2d"),
        ({"0.bias": torch.ones(5)}, r"0.bias: shape \(5,\)"),
        ({"0": {"weight": torch.ones(4, 2, 3, 3) * 2}}, "0 or 1"),
        ({"9.weight_mask": torch.ones(1)}, "names no parameter"),
    ],
)
def test_bad_mask_keys_and_values(mask, message):
    with pytest.raises(SparsekitError, match=message):
        collect_masks(small_model(), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_a_mask_on_the_meta_device_is_refused_by_name(dtype):
    mask = {"0.weight": torch.ones(4, 2, 3, 3, dtype=dtype, device="meta")}
    with pytest.raises(SparsekitError, match="mask for 0.weight: is on the meta device"):
        sparsekit.compile(small_model().eval(), mask, torch.randn(2, 2, 3, 3), measure=False)
