"""nn.MultiheadAttention made sparse: SparseMultiheadAttention computes what the module computes
for every option; compile packs its projections (in_proj_weight included), never replaces a
child that its parent reads by attribute (out_proj) on its own, says why a layer stays dense,
and a compiled attention model round-trips through save and load."""

import copy
import itertools
import warnings

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

import sparsekit
from sparsekit import SparsekitError, SparsekitWarning, SparseLinear, tolerance
from sparsekit.attention import PROJECTIONS, SparseMultiheadAttention
from sparsekit.graph import conv_bn_pairs

from .helpers import assert_model_close, dense_masked

E, HEADS = 32, 4


def assert_close(actual, expected):
    error, bound = tolerance.max_error(actual, expected), tolerance.bound(expected)
    assert error <= bound, f"max error {error:.3e} > {bound:.3e}"


def unstructured_masks(model, keep: float = 0.2, seed: int = 0) -> dict:
    """{param name: bool mask} keeping ``keep`` of each weight at random: every Linear's weight
    and every attention's input projection weights."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for name, module in model.named_modules():
        params = ()
        if isinstance(module, nn.Linear):
            params = ("weight",)
        elif isinstance(module, nn.MultiheadAttention):
            params = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        for param in params:
            value = getattr(module, param)
            if value is not None:
                masks[f"{name}.{param}"] = torch.rand(value.shape, generator=gen) < keep
    return masks


def row_masks(model, seed: int = 0) -> dict:
    """The weights of ``unstructured_masks`` with a quarter of their output rows kept instead:
    plans the cost models pack (so that a test can tell a packed layer from a dense one)."""
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for key, value in unstructured_masks(model).items():
        rows = torch.rand(value.shape[0], 1, generator=gen) < 0.25
        masks[key] = rows.expand(value.shape).clone()
    return masks


class SelfAttention(nn.Module):
    """Self-attention as vision transformers call it (batch first, no weights), then a
    head."""

    def __init__(self, **options):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True, **options)
        self.fc = nn.Linear(E, 10)

    def forward(self, x):
        y, _ = self.attn(x, x, x, need_weights=False)
        return self.fc(y.mean(1))


class CrossAttention(nn.Module):
    """Sequence-first cross-attention with other key / value sizes, padding and weights."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, kdim=24, vdim=20, add_bias_kv=True)

    def forward(self, query, key, value, padding):
        y, weights = self.attn(query, key, value, key_padding_mask=padding)
        return torch.cat([y.mean(0), weights.flatten(1)], dim=1)


# ---- SparseMultiheadAttention against nn.MultiheadAttention ----

MODULE_OPTIONS = [
    {},
    {"batch_first": True},
    {"bias": False},
    {"add_bias_kv": True, "add_zero_attn": True},
    {"kdim": 24, "vdim": 20, "batch_first": True},  # cross-attention only: other key sizes
]
# (key_padding_mask, attn_mask, is_causal): where both masks are given, of one dtype as torch asks
MASKS = [
    (None, None, False),
    ("bool", None, False),
    ("float", "float", False),
    (None, "bool", True),
    ("bool", "bool", True),
    (None, "float3d", False),
]


def attention_masks(kinds, batch, tgt, src, gen):
    padding_kind, mask_kind, is_causal = kinds
    padding = None
    if padding_kind == "bool":
        padding = torch.rand(batch, src, generator=gen) < 0.3
        padding[:, 0] = False  # every query attends to something
    elif padding_kind == "float":
        padding = torch.randn(batch, src, generator=gen)
    mask = None
    if mask_kind == "bool":
        mask = torch.ones(tgt, src, dtype=torch.bool).triu(1)
    elif mask_kind == "float":
        mask = torch.randn(tgt, src, generator=gen)
    elif mask_kind == "float3d":
        mask = torch.randn(batch * HEADS, tgt, src, generator=gen)
    return padding, mask, is_causal


@pytest.mark.parametrize(
    ("options", "self_attention"),
    [(o, s) for o in MODULE_OPTIONS for s in (True, False) if not (s and "kdim" in o)],
    ids=str,
)
@pytest.mark.parametrize("batched", [True, False], ids=["batched", "unbatched"])
def test_sparse_attention_computes_what_multihead_attention_computes(
    options, self_attention, batched
):
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(E, HEADS, **options).eval()
    twin = SparseMultiheadAttention.from_module(copy.deepcopy(attention))
    batch, tgt, src = (3 if batched else 1), 5, (5 if self_attention else 7)

    def sequence(length, size):
        if not batched:
            return torch.randn(length, size, generator=gen)
        shape = (batch, length, size) if attention.batch_first else (length, batch, size)
        return torch.randn(shape, generator=gen)

    query = sequence(tgt, E)
    key = query if self_attention else sequence(src, attention.kdim)
    value = query if self_attention else sequence(src, attention.vdim)
    for kinds, need_weights, average in itertools.product(MASKS, [False, True], [True, False]):
        padding, mask, is_causal = attention_masks(kinds, batch, tgt, src, gen)
        if padding is not None and not batched:
            padding = padding[0]
        call = dict(
            key_padding_mask=padding,
            need_weights=need_weights,
            attn_mask=mask,
            average_attn_weights=average,
            is_causal=is_causal,
        )
        with torch.inference_mode():
            expected, expected_weights = attention(query, key, value, **call)
            actual, weights = twin(query, key, value, **call)
        assert_close(actual, expected)
        if need_weights:
            assert_close(weights, expected_weights)
        else:
            assert weights is None and expected_weights is None


def test_sparse_attention_refuses_what_multihead_attention_refuses():
    twin = SparseMultiheadAttention.from_module(nn.MultiheadAttention(E, HEADS).eval())
    x = torch.randn(5, 2, E)
    with pytest.raises(SparsekitError, match="is_causal needs attn_mask"):
        twin(x, x, x, is_causal=True)
    with pytest.raises(SparsekitError, match="attn_mask has shape"):
        twin(x, x, x, attn_mask=torch.zeros(5, 4))
    with pytest.raises(SparsekitError, match="key_padding_mask has shape"):
        twin(x, x, x, key_padding_mask=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(SparsekitError, match="bool or floating point"):
        twin(x, x, x, key_padding_mask=torch.zeros(2, 5, dtype=torch.int64))


# ---- compile ----


def test_out_proj_is_never_replaced_on_its_own_and_the_model_runs_without_example_inputs():
    # out_proj alone masked: it used to become a SparseLinear that attention reads .weight of
    torch.manual_seed(0)
    model = SelfAttention().eval()
    masks = {"attn.out_proj.weight": row_masks(model)["attn.out_proj.weight"]}
    compiled = sparsekit.compile(model, masks, verify=False)
    attention = compiled.attn
    assert isinstance(attention, SparseMultiheadAttention)
    assert isinstance(attention.out_proj, SparseLinear) and not attention.out_proj.is_dense
    assert all(type(getattr(attention, p)) is nn.Linear for p in ("q_proj", "k_proj", "v_proj"))
    x = torch.randn(4, 6, E)
    assert_model_close(compiled(x), dense_masked(model, masks)(x))
    assert isinstance(model.attn, nn.MultiheadAttention)  # the model itself is left as it was


def test_in_proj_weight_masks_make_the_input_projections_sparse():
    torch.manual_seed(0)
    model = SelfAttention().eval()
    masks = row_masks(model)
    assert set(masks) == {"attn.in_proj_weight", "attn.out_proj.weight", "fc.weight"}
    x = torch.randn(4, 6, E)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "never reach" for out_proj, nor any other warning
        compiled = sparsekit.compile(model, masks, x, measure=False)
    attention = compiled.attn
    assert isinstance(attention, SparseMultiheadAttention)
    for name in PROJECTIONS:
        layer = getattr(attention, name)
        assert isinstance(layer, SparseLinear) and not layer.is_dense, name
        assert layer.config["source"]["layer"] == f"attn.{name}"
    assert attention.q_proj.summary()["flops_ratio"] < 0.5  # a quarter of its rows kept
    assert_model_close(compiled(x), dense_masked(model, masks)(x))
    report = compiled.sparsekit_report
    assert report.ok and {f"attn.{p}" for p in PROJECTIONS} <= {r.name for r in report.layers}


@pytest.mark.parametrize("source", ["prune_hooks", "zeros"])
def test_attention_masks_are_found_in_prune_hooks_and_zeros(source):
    torch.manual_seed(0)
    model = SelfAttention().eval()
    masks = row_masks(model)
    pruned = copy.deepcopy(model)
    for key, mask in masks.items():
        module_name, _, param = key.rpartition(".")
        module = pruned.get_submodule(module_name)
        if source == "prune_hooks":
            prune.custom_from_mask(module, param, mask)
        else:
            with torch.no_grad():
                getattr(module, param).mul_(mask)
    x = torch.randn(4, 6, E)
    compiled = sparsekit.compile(pruned, None, x, measure=False)
    assert not compiled.attn.q_proj.is_dense and not compiled.attn.out_proj.is_dense
    assert_model_close(compiled(x), dense_masked(model, masks)(x))
    if source == "prune_hooks":  # the caller's model keeps its hooks and still runs
        assert hasattr(pruned.attn, "in_proj_weight_orig")
        assert_model_close(pruned(x), dense_masked(model, masks)(x))


def test_cross_attention_with_its_own_key_and_value_sizes_compiles_exactly():
    torch.manual_seed(0)
    model = CrossAttention().eval()
    masks = unstructured_masks(model)
    assert {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight"} <= set(masks)
    gen = torch.Generator().manual_seed(1)
    padding = torch.rand(4, 7, generator=gen) < 0.3
    padding[:, 0] = False
    inputs = (torch.randn(5, 4, E), torch.randn(7, 4, 24), torch.randn(7, 4, 20), padding)
    compiled = sparsekit.compile(model, masks, inputs, measure=False)
    assert isinstance(compiled.attn, SparseMultiheadAttention)
    assert compiled.attn.bias_k is not None
    assert_model_close(compiled(*inputs), dense_masked(model, masks)(*inputs))


class EncoderBlock(nn.Module):
    """torchvision's vision transformer encoder block, as it is written there."""

    def __init__(self, hidden: int, heads: int, mlp: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(hidden, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(hidden, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(hidden, mlp), nn.GELU(), nn.Linear(mlp, hidden))

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, tokens: int, hidden: int, heads: int, mlp: int, layers: int):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, hidden) * 0.02)
        self.layers = nn.Sequential(*(EncoderBlock(hidden, heads, mlp) for _ in range(layers)))
        self.ln = nn.LayerNorm(hidden, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))


class VisionTransformer(nn.Module):
    """torchvision's VisionTransformer in small (same module names): patches, class token,
    encoder, head."""

    def __init__(self, image=32, patch=8, hidden=64, heads=4, mlp=128, layers=2, classes=10):
        super().__init__()
        self.conv_proj = nn.Conv2d(3, hidden, patch, stride=patch)
        self.class_token = nn.Parameter(torch.randn(1, 1, hidden) * 0.02)
        self.encoder = Encoder((image // patch) ** 2 + 1, hidden, heads, mlp, layers)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(hidden, classes))

    def forward(self, x):
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.heads(self.encoder(x)[:, 0])


def torchvision_vit():
    vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")
    return vision_transformer.VisionTransformer(
        image_size=32,
        patch_size=8,
        num_layers=2,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=10,
    )


@pytest.mark.parametrize("make", [VisionTransformer, torchvision_vit], ids=["local", "torchvision"])
def test_a_vision_transformer_with_unstructured_masks_compiles_exactly(make):
    torch.manual_seed(0)
    model = make().eval()
    masks = unstructured_masks(model)  # 80% of every Linear and of in_proj_weight pruned
    assert "encoder.layers.0.self_attention.in_proj_weight" in masks
    x = torch.randn(4, 3, 32, 32)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    attention = compiled.encoder.layers[0].self_attention
    assert isinstance(attention, SparseMultiheadAttention)
    assert all(isinstance(getattr(attention, p), SparseLinear) for p in PROJECTIONS)
    assert not attention.q_proj.is_dense  # what the cost models choose at 80% unstructured
    assert_model_close(compiled(x), dense_masked(model, masks)(x))
    assert compiled.sparsekit_report.ok


def test_children_a_parent_reads_by_attribute_stay_dense_and_the_warning_says_why():
    torch.manual_seed(0)
    model = nn.TransformerEncoderLayer(E, HEADS, 64, batch_first=True).eval()
    masks = row_masks(model)
    x = torch.randn(4, 6, E)
    with pytest.warns(SparsekitWarning) as record:
        compiled = sparsekit.compile(model, masks, x, measure=False)
    messages = [str(w.message) for w in record]
    assert not any("never reach" in m for m in messages)
    assert all(w.filename == __file__ for w in record)  # they point at compile's caller
    for name in ("self_attn", "linear1", "linear2"):
        assert any(
            f"{name!r}" in m and "read by attribute by its parent nn.TransformerEncoderLayer" in m
            for m in messages
        ), name
    assert type(compiled.linear1) is nn.Linear  # its fast path reads linear1.weight
    assert type(compiled.self_attn) is nn.MultiheadAttention
    with torch.inference_mode():
        assert_model_close(compiled(x), dense_masked(model, masks)(x))


def test_an_attention_subclass_with_its_own_forward_stays_dense_with_the_reason():
    class ScaledAttention(nn.MultiheadAttention):
        def forward(self, query, key, value, **kwargs):
            y, weights = super().forward(query, key, value, **kwargs)
            return 2 * y, weights

    model = SelfAttention()
    model.attn = ScaledAttention(E, HEADS, batch_first=True)
    model.eval()
    masks = row_masks(model)
    x = torch.randn(4, 6, E)
    with pytest.warns(SparsekitWarning, match="'attn'.*ScaledAttention, whose forward is its own"):
        compiled = sparsekit.compile(model, masks, x, measure=False)
    assert (
        type(compiled.attn) is ScaledAttention and type(compiled.attn.out_proj) is not SparseLinear
    )
    assert_model_close(compiled(x), dense_masked(model, masks)(x))


def test_inplace_rebuilds_the_attention_of_the_given_model():
    torch.manual_seed(0)
    model = SelfAttention().eval()
    masks = row_masks(model)
    reference = dense_masked(model, masks)
    x = torch.randn(4, 6, E)
    # the model's own structure: a compacted result is a new GraphModule
    compiled = sparsekit.compile(
        model, masks, x, inplace=True, measure=False, compact_channels=False
    )
    assert compiled is model and isinstance(model.attn, SparseMultiheadAttention)
    assert_model_close(model(x), reference(x))


def test_a_model_with_attention_stays_traceable_so_its_batchnorms_are_folded():
    class ConvAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, E, 3, padding=1), nn.BatchNorm2d(E)
            self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
            self.fc = nn.Linear(E, 10)

        def forward(self, x):
            y = self.bn(self.conv(x)).flatten(2).transpose(1, 2)
            y, _ = self.attn(y, y, y, need_weights=False)
            return self.fc(y.mean(1))

    torch.manual_seed(0)
    model = ConvAttention().eval()
    with torch.no_grad():  # statistics that make the folded BatchNorm matter
        model.bn.running_mean.uniform_(-1, 1)
        model.bn.running_var.uniform_(0.5, 2)
    masks = row_masks(model) | {"conv.weight": torch.rand(E, 3, 3, 3) < 0.5}
    rebuilt = copy.deepcopy(model)
    rebuilt.attn = SparseMultiheadAttention.from_module(rebuilt.attn)
    assert conv_bn_pairs(rebuilt) == [("conv", "bn")]
    x = torch.randn(4, 3, 6, 6)
    compiled = sparsekit.compile(model, masks, x, measure=False)
    assert isinstance(compiled.bn, nn.Identity)
    assert_model_close(compiled(x), dense_masked(model, masks)(x))


def test_a_compiled_attention_model_round_trips_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = VisionTransformer().eval()
    masks = {  # in_proj_weight of the first attention, out_proj of the second
        key: mask
        for key, mask in row_masks(model).items()
        if key.startswith(
            ("encoder.layers.0.self_attention.in", "encoder.layers.1.self_attention.out")
        )
    }
    x = torch.randn(2, 3, 32, 32)
    compiled = sparsekit.compile(model, masks, x, measure=False, verify=False)
    sparsekit.save(compiled, tmp_path)
    fresh = VisionTransformer().eval()
    loaded = sparsekit.load(tmp_path, fresh)
    for block in loaded.encoder.layers:
        assert isinstance(block.self_attention, SparseMultiheadAttention)
    assert not loaded.encoder.layers[0].self_attention.q_proj.is_dense
    assert type(loaded.encoder.layers[1].self_attention.q_proj) is nn.Linear
    assert torch.equal(loaded(x), compiled(x))
    assert isinstance(fresh.encoder.layers[0].self_attention, nn.MultiheadAttention)


def test_only_attention_input_projections_take_masks():
    model = SelfAttention(add_bias_kv=True).eval()
    with pytest.raises(SparsekitError, match="'attn.bias_k' names no parameter"):
        sparsekit.compile(model, {"attn.bias_k": torch.ones(1, 1, E)}, verify=False)
    with pytest.raises(SparsekitError, match="attn.in_proj_weight: shape"):
        sparsekit.compile(model, {"attn.in_proj_weight": torch.ones(E, E)}, verify=False)
