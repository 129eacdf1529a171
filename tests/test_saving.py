import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import sparsekit
from sparsekit import SparsekitError, SparsekitWarning, saving, zoo

from .helpers import calibrated_zoo_model


@pytest.fixture(scope="module")
def compiled_resnet():
    torch.manual_seed(0)
    model, masks = calibrated_zoo_model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    # the model's own structure (the compacted one has tests of its own below)
    compiled = sparsekit.compile(model, masks, x, measure=False, compact_channels=False)
    assert compiled.sparsekit_report.discriminating  # a wrong load would show in the output
    return compiled, x


@pytest.fixture(scope="module")
def compacted_resnet():
    torch.manual_seed(0)
    model, masks = calibrated_zoo_model("resnet18")
    x = torch.randn(2, 3, 32, 32)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    assert compiled.sparsekit_report.discriminating and compiled.sparsekit_report.compaction
    return compiled, x


def test_a_compacted_model_round_trips_bit_identically(compacted_resnet, tmp_path):
    compiled, x = compacted_resnet
    sparsekit.save(compiled, tmp_path / "model")
    meta = json.loads((tmp_path / "model" / "sparsekit.json").read_text())
    assert meta["compaction"]["plan"]["nodes"] and meta["compaction"]["folded_batchnorms"]
    loaded = sparsekit.load(tmp_path / "model", zoo.create("resnet18"))
    assert type(loaded).__name__ == "CompactedModel"
    fresh = torch.randn(3, 3, 40, 24)  # another batch and size than the example's
    with torch.inference_mode():
        assert torch.equal(loaded(x), compiled(x)) and torch.equal(loaded(fresh), compiled(fresh))
    assert loaded.state_dict().keys() == compiled.state_dict().keys()


def test_a_compacted_model_refuses_another_architecture(compacted_resnet, tmp_path):
    sparsekit.save(compacted_resnet[0], tmp_path)
    with pytest.raises(SparsekitError, match="same architecture"):
        sparsekit.load(tmp_path, zoo.create("wrn32_2"))


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
    with pytest.raises(SparsekitError, match="layer 'fc'.*does not fit.*out_features is 10"):
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
    resave(tmp_path, lambda meta: meta["layers"]["0"].update(backend="torch"))
    with pytest.raises(SparsekitError, match=r"model\.safetensors: layer '0'.*whole kernels"):
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


def resave(path, edit_meta=None, edit_state=None):
    """Edit a saved model's files and sign them again, as a file written so would be: what load
    must catch is then in the content, not in the hash."""
    meta_file, tensors = path / "sparsekit.json", path / "model.safetensors"
    if edit_state is not None:
        state = load_file(str(tensors))
        edit_state(state)
        save_file(state, str(tensors))
    meta = json.loads(meta_file.read_text())
    if edit_meta is not None:
        edit_meta(meta)
    meta["sha256"] = {
        "description": saving._description_sha256(meta),
        "model.safetensors": saving._file_sha256(tensors),
    }
    meta_file.write_text(json.dumps(meta))


def small_model(conv=None, linear_bias=True):
    """Two convs and a Linear; ``conv`` changes the second conv's arguments."""
    return nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, **({"padding": 1} | (conv or {}))),
        nn.Flatten(),
        nn.Linear(32 * 5 * 5, 10, bias=linear_bias),
    ).eval()


@pytest.fixture(scope="module")
def small_compiled():
    """(compiled small_model, an input): three quarters of every layer's output rows pruned, so
    that each is packed on the C++ backend."""
    torch.manual_seed(0)
    model = small_model()
    with torch.no_grad():
        for layer in (model[0], model[2], model[4]):
            layer.weight[layer.weight.shape[0] // 4 :] = 0
    compiled = sparsekit.compile(model, None, backend="cpu", measure=False, verify=False)
    assert all(compiled[i].backend == "cpu" for i in (0, 2, 4))
    return compiled, torch.randn(2, 16, 5, 5)


@pytest.mark.parametrize(
    ("target", "key"),
    [
        ({"conv": {"stride": 2}}, "stride"),
        ({"conv": {"padding": 2}}, "pad"),
        ({"conv": {"dilation": 2, "padding": 2}}, "dilation"),
        ({"conv": {"padding_mode": "reflect"}}, "padding_mode"),
        ({"conv": {"bias": False}}, "bias"),
        ({"linear_bias": False}, "bias"),
    ],
    ids=str,
)
def test_a_layer_is_refused_by_a_module_of_other_arguments(small_compiled, tmp_path, target, key):
    """Each of these models has the saved weights' shapes: only the check of every argument
    against the module replaced tells that the saved layer computes something else."""
    sparsekit.save(small_compiled[0], tmp_path)
    layer = "4" if "linear_bias" in target else "2"
    with pytest.raises(SparsekitError, match=f"layer '{layer}': .*does not fit.*its {key} is"):
        sparsekit.load(tmp_path, small_model(**target))


@pytest.mark.parametrize("edit", [{"relu": True}, {"stride": [2, 2]}, {"pad": [0, 0, 0, 0]}])
def test_an_edited_description_is_refused(small_compiled, tmp_path, edit):
    sparsekit.save(small_compiled[0], tmp_path)
    file = tmp_path / "sparsekit.json"
    meta = json.loads(file.read_text())
    meta["layers"]["2"].update(edit)
    file.write_text(json.dumps(meta, indent=1))
    with pytest.raises(SparsekitError, match=r"sparsekit\.json was edited or corrupted"):
        sparsekit.load(tmp_path, small_model())


def test_the_description_hash_ignores_formatting(small_compiled, tmp_path):
    compiled, x = small_compiled
    sparsekit.save(compiled, tmp_path)
    file = tmp_path / "sparsekit.json"
    file.write_text(json.dumps(json.loads(file.read_text()), indent=4))
    assert torch.equal(sparsekit.load(tmp_path, small_model())(x), compiled(x))


def test_edited_tensors_are_refused(small_compiled, tmp_path):
    sparsekit.save(small_compiled[0], tmp_path)
    file = tmp_path / "model.safetensors"
    data = bytearray(file.read_bytes())
    data[-1] ^= 1  # one bit of the last tensor's data: the file still parses
    file.write_bytes(bytes(data))
    with pytest.raises(SparsekitError, match=r"model\.safetensors was edited or corrupted"):
        sparsekit.load(tmp_path, small_model())


def test_an_unhashed_version_1_file_loads_with_a_warning(small_compiled, tmp_path):
    compiled, x = small_compiled
    sparsekit.save(compiled, tmp_path)
    file = tmp_path / "sparsekit.json"
    meta = json.loads(file.read_text())
    del meta["sha256"]
    file.write_text(json.dumps(meta | {"version": 1}))
    with pytest.warns(SparsekitWarning, match="version 1, saved without a SHA-256"):
        loaded = sparsekit.load(tmp_path, small_model())
    assert torch.equal(loaded(x), compiled(x))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 3}, "format version 3; this sparsekit reads versions 1 and 2"),
        ({"version": "2"}, "format version '2'"),
        ({"sha256": None}, "edited or corrupted"),
    ],
)
def test_other_versions_and_a_missing_hash_are_refused(small_compiled, tmp_path, change, message):
    sparsekit.save(small_compiled[0], tmp_path)
    file = tmp_path / "sparsekit.json"
    file.write_text(json.dumps(json.loads(file.read_text()) | change))
    with pytest.raises(SparsekitError, match=message):
        sparsekit.load(tmp_path, small_model())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("sizes", {"values": -5}, r"sizes\.values is -5, not an int in \[0, 4608\]"),
        ("sizes", {"values": 10**13}, r"sizes\.values is 10000000000000"),
        ("sizes", {"blocks": 2.0}, r"sizes\.blocks is 2\.0"),
        ("sizes", {"row_idx": True}, r"sizes\.row_idx is True"),
        ("out_channels", -5, "out_channels is -5"),
        ("kernel_size", [10**13, 3], r"kernel_size is \[10000000000000, 3\]"),
        ("dtype", "torch.int64", "dtype 'torch.int64' is not one of"),
        ("relu", 1, "relu must be true or false, not 1"),
        ("backend", None, "backend must be a string"),
    ],
)
def test_every_entry_is_checked_before_anything_is_allocated(
    small_compiled, tmp_path, monkeypatch, key, value, message
):
    sparsekit.save(small_compiled[0], tmp_path)

    def edit(meta):
        config = meta["layers"]["0"]  # the first layer: no sparse layer is built before it
        config[key] = config[key] | value if isinstance(value, dict) else value

    resave(tmp_path, edit)
    monkeypatch.setattr(saving, "from_config", lambda *_: pytest.fail("a layer was built"))
    with pytest.raises(SparsekitError, match=rf"sparsekit\.json: layer '0': .*{message}"):
        sparsekit.load(tmp_path, small_model())


def test_a_malformed_pack_names_the_file_and_the_layer(small_compiled, tmp_path):
    sparsekit.save(small_compiled[0], tmp_path)
    resave(tmp_path, edit_state=lambda state: state["2.row_idx"].fill_(99))
    with pytest.raises(SparsekitError, match=r"model\.safetensors: layer '2'.*row index lies"):
        sparsekit.load(tmp_path, small_model())


def test_a_converted_model_loads_in_the_dtype_it_was_saved_in(small_compiled, tmp_path):
    compiled, x = small_compiled
    half = copy.deepcopy(compiled).half()
    sparsekit.save(half, tmp_path)
    loaded = sparsekit.load(tmp_path, small_model())
    assert loaded[2].values.dtype == loaded[2].bias.dtype == torch.float16
    assert torch.equal(loaded(x.half()), half(x.half()))


def test_a_converted_model_keeps_its_dtype_in_the_layers_left_as_they_were(tmp_path):
    torch.manual_seed(0)
    model = small_model()
    mask = (torch.arange(32) < 8).view(-1, 1, 1, 1).expand_as(model[2].weight).float()
    compiled = sparsekit.compile(model, {"2.weight": mask}, backend="cpu", verify=False)
    assert isinstance(compiled[0], nn.Conv2d) and isinstance(compiled[4], nn.Linear)
    half = compiled.half()
    sparsekit.save(half, tmp_path)
    loaded = sparsekit.load(tmp_path, small_model())
    assert loaded[0].weight.dtype == loaded[4].weight.dtype == torch.float16
    x = torch.randn(2, 16, 5, 5).half()
    assert torch.equal(loaded(x), half(x))
