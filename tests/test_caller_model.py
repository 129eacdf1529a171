"""compile leaves the caller's model as it was, bit for bit and in behaviour, whatever it
carries: prune hooks, torch.ao.pruning parametrizations, weight norm and spectral norm (as
parametrizations or as the older hooks); its own API still works afterwards."""

import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn
from torch.ao.pruning import WeightNormSparsifier
from torch.nn.utils import parametrizations, parametrize

import sparsekit
from sparsekit import zoo

from .helpers import assert_model_close


def small_net() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    zoo.calibrate_batchnorm(model, [torch.randn(8, 3, 8, 8) for _ in range(2)])
    return model.eval()


def with_prune_hooks(model):
    for i in (3, 7, 9):
        prune.l1_unstructured(model[i], "weight", 0.7)
    return lambda: prune.remove(model[7], "weight")


def with_ao_sparsifier(model):
    sparsifier = WeightNormSparsifier(
        sparsity_level=0.8, sparse_block_shape=(1, 4), zeros_per_block=4
    )
    sparsifier.prepare(model, config=[{"tensor_fqn": "7.weight"}, {"tensor_fqn": "9.weight"}])
    sparsifier.step()
    return sparsifier.squash_mask


def with_weight_norm(model):
    parametrizations.weight_norm(model[7])
    parametrizations.weight_norm(model[3])
    return lambda: parametrize.remove_parametrizations(model[7], "weight")


def with_spectral_norm(model):
    parametrizations.spectral_norm(model[7])
    return lambda: parametrize.remove_parametrizations(model[7], "weight")


def with_weight_norm_hook(model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated in favour of the above
        torch.nn.utils.weight_norm(model[7])
    return lambda: torch.nn.utils.remove_weight_norm(model[7])


@pytest.mark.parametrize(
    "carry",
    [
        with_prune_hooks,
        with_ao_sparsifier,
        with_weight_norm,
        with_spectral_norm,
        with_weight_norm_hook,
    ],
)
@pytest.mark.parametrize("inputs", [True, False], ids=["checked", "unchecked"])
def test_compile_leaves_the_callers_model_as_it_was(carry, inputs):
    model = small_net()
    own_api = carry(model)
    x = torch.randn(2, 3, 8, 8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = [type(m) for m in model.modules()]
    expected = model(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sparsekit.SparsekitWarning)  # "not verified" without x
        compiled = sparsekit.compile(model, None, x if inputs else None, measure=False)
    assert_model_close(compiled(x), expected)

    assert [type(m) for m in model.modules()] == classes and not model.training
    after = model.state_dict()
    assert after.keys() == state.keys() and all(torch.equal(after[k], v) for k, v in state.items())
    assert torch.equal(model(x), expected)
    weight = model[7].weight.detach().clone()
    own_api()  # e.g. squash_mask(), remove_parametrizations(): the model's own API still works
    assert torch.allclose(model[7].weight, weight) and torch.allclose(model(x), expected)
