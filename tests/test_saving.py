import json

import pytest
import torch

import sparsekit
from sparsekit import SparsekitError, zoo

from .helpers import calibrated_zoo_model


@pytest.fixture(scope="module")
def compiled_resnet():
    torch.manual_seed(0)
    model, masks = calibrated_zoo_model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    assert compiled.sparsekit_report.discriminating  # a wrong load would show in the output
    return compiled, x


def test_round_trip_is_bit_identical(compiled_resnet, tmp_path):
    compiled, x = compiled_resnet
    sparsekit.save(compiled, tmp_path / "model")
    fresh = zoo.create("resnet18").eval()
    loaded = sparsekit.load(tmp_path / "model", fresh)
    assert torch.equal(loaded(x), compiled(x))
    assert not any(isinstance(m, sparsekit.SparseConv2d) for m in fresh.modules())
    meta = json.loads((tmp_path / "model" / "sparsekit.json").read_text())
    assert meta["report"]["ok"] and "layer1.0.bn1" in meta["folded_batchnorms"]


def test_loading_into_another_architecture_fails(compiled_resnet, tmp_path):
    sparsekit.save(compiled_resnet[0], tmp_path)
    with pytest.raises(SparsekitError, match="same architecture"):
        sparsekit.load(tmp_path, zoo.create("vgg16_bn").eval())
    with pytest.raises(SparsekitError, match="do not fit"):
        sparsekit.load(tmp_path, zoo.create("resnet18", num_classes=7).eval())


@pytest.mark.parametrize("damage", ["tensors", "json", "format", "missing"])
def test_corrupt_files_are_errors(compiled_resnet, tmp_path, damage):
    sparsekit.save(compiled_resnet[0], tmp_path)
    tensors, meta = tmp_path / "model.safetensors", tmp_path / "sparsekit.json"
    if damage == "tensors":
        tensors.write_bytes(tensors.read_bytes()[:1000])
    elif damage == "json":
        meta.write_text("{not json")
    elif damage == "format":
        meta.write_text(json.dumps({"format": "pickle", "version": 1}))
    else:
        tensors.unlink()
    with pytest.raises(SparsekitError, match="load"):
        sparsekit.load(tmp_path, zoo.create("resnet18").eval())


def test_loading_checks_that_each_backend_can_run_its_pack(tmp_path):
    conv = torch.nn.Conv2d(64, 64, 3)
    mask = torch.zeros_like(conv.weight)
    mask[:32, :32] = 1
    mask[:, :, 1, 1] = 0  # kernels without their centre tap: blocks of partial kernels
    with torch.no_grad():
        conv.weight.mul_(mask)
    model = torch.nn.Sequential(conv).eval()
    compiled = sparsekit.compile(
        model, None, structure="group", backend="cpu", measure=False, verify=False
    )
    assert compiled[0].backend == "cpu" and not compiled[0].supports("torch")
    sparsekit.save(compiled, tmp_path)
    meta = json.loads((tmp_path / "sparsekit.json").read_text())
    meta["layers"]["0"]["backend"] = "torch"
    (tmp_path / "sparsekit.json").write_text(json.dumps(meta))
    with pytest.raises(SparsekitError, match="whole kernels"):
        sparsekit.load(tmp_path, torch.nn.Sequential(torch.nn.Conv2d(64, 64, 3)).eval())


def test_saving_an_uncompiled_model_is_an_error(tmp_path):
    with pytest.raises(SparsekitError, match="compile it first"):
        sparsekit.save(zoo.create("resnet18"), tmp_path)


def test_a_loaded_model_traces_and_exports_before_it_ever_ran(compiled_resnet, tmp_path):
    compiled, x = compiled_resnet
    sparsekit.save(compiled, tmp_path)
    loaded = sparsekit.load(tmp_path, zoo.create("resnet18").eval())  # its layouts made by load
    exported = torch.export.export(loaded, (x,))
    traced = torch.compile(
        sparsekit.load(tmp_path, zoo.create("resnet18").eval()), backend="aot_eager", fullgraph=True
    )
    assert torch.equal(exported.module()(x), compiled(x)) and torch.equal(traced(x), compiled(x))
