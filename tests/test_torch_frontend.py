"""The PyTorch frontend: torch.export -> core ATen -> tilecraft Graph.

Every imported graph is verified and run through the numpy reference interpreter
against torch eager.  `build_model(name)` / `MODELS` are meant for reuse by other
tests (compiled-module tests build the same modules).
"""

from __future__ import annotations

import subprocess
import sys
from typing import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tilecraft.compiler.interpret import run_graph  # noqa: E402
from tilecraft.compiler.ir import Graph, verify  # noqa: E402
from tilecraft.errors import ModelLoadError, ShapeError, UnsupportedOpError  # noqa: E402
from tilecraft.frontends.torch import from_torch, load_pt2  # noqa: E402


# =========================================================================== reusable model builders
def _randomize_norms(module: nn.Module) -> nn.Module:
    """Fresh BatchNorm stats are identity (mean 0, var 1); make them matter."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            if m.affine:
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
    return module


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class TinyResNet(nn.Module):
    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.layers = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, stride=2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _conv_bn_act(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: type | None = nn.ReLU6):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, *([act()] if act else []))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.block = nn.Sequential(
            _conv_bn_act(cin, hidden, 1),
            _conv_bn_act(hidden, hidden, 3, stride, groups=hidden),  # depthwise
            _conv_bn_act(hidden, cout, 1, act=None),  # linear bottleneck
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class TinyMobileNetV2(nn.Module):
    def __init__(self, classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_act(3, 8, 3, 2), InvertedResidual(8, 8, 1, 2), InvertedResidual(8, 12, 2, 3),
            InvertedResidual(12, 12, 1, 3), _conv_bn_act(12, 32, 1, act=nn.Hardswish),
        )
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class EncoderBlock(nn.Module):
    """Pre-norm transformer block written with F.scaled_dot_product_attention."""

    def __init__(self, dim: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim))

    def forward(self, x):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, s, d)
        x = x + self.proj(a)
        return x + self.mlp(self.ln2(x))


class DecoderBlock(nn.Module):
    """Llama-style block: RMSNorm, causal grouped-query attention, SiLU-gated MLP."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, dim // heads
        self.norm1, self.norm2 = nn.RMSNorm(dim, eps=1e-6), nn.RMSNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * kv_heads * self.hd, bias=False)
        self.o = nn.Linear(dim, dim, bias=False)
        self.gate, self.up = nn.Linear(dim, 2 * dim, bias=False), nn.Linear(dim, 2 * dim, bias=False)
        self.down = nn.Linear(2 * dim, dim, bias=False)

    def forward(self, x):
        b, s, d = x.shape
        h = self.norm1(x)
        q = self.q(h).view(b, s, self.heads, self.hd).transpose(1, 2)
        k, v = self.kv(h).view(b, s, 2, self.kv_heads, self.hd).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        h = self.norm2(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class AttentionVariants(nn.Module):
    """Causal, additive-mask and boolean-mask SDPA over the same q, k, v."""

    def __init__(self, seq: int = 6):
        super().__init__()
        self.register_buffer("keep", torch.rand(seq, seq) > 0.3, persistent=False)
        self.keep[:, 0] = True  # no fully masked rows (they would be NaN)

    def forward(self, q, k, v, bias):
        return (
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
            F.scaled_dot_product_attention(q, k, v, attn_mask=self.keep, scale=0.3),
        )


class EmbeddingModel(nn.Module):
    def __init__(self, vocab: int = 50, dim: int = 16, seq: int = 7):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(seq, dim)
        self.norm, self.out = nn.LayerNorm(dim), nn.Linear(dim, 3)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])
        h = self.norm(self.tok(ids) + self.pos(pos))
        return self.out(h.mean(dim=1)).log_softmax(-1)


def _resnet():
    return _randomize_norms(TinyResNet()), (torch.randn(2, 3, 16, 16),)


def _mobilenet():
    return _randomize_norms(TinyMobileNetV2()), (torch.randn(1, 3, 16, 16),)


def _encoder():
    return EncoderBlock(), (torch.randn(2, 8, 32),)


def _torch_encoder():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, activation="gelu", batch_first=True)
    return layer, (torch.randn(2, 5, 16),)


def _decoder():
    return DecoderBlock(), (torch.randn(2, 6, 32),)


def _attention():
    q, k, v = (torch.randn(2, 3, 6, 8) for _ in range(3))
    return AttentionVariants(), (q, k, v, torch.randn(6, 6))


def _embedding():
    return EmbeddingModel(), (torch.randint(0, 50, (2, 7)),)


MODELS: dict[str, Callable[[], tuple[nn.Module, tuple]]] = {
    "resnet": _resnet, "mobilenet_v2": _mobilenet, "encoder_block": _encoder, "torch_encoder_layer": _torch_encoder,
    "decoder_block": _decoder, "attention": _attention, "embedding": _embedding,
}


def build_model(name: str, *, seed: int = 0) -> tuple[nn.Module, tuple]:
    """A seeded (module in eval mode, example inputs) pair from MODELS."""
    torch.manual_seed(seed)
    module, inputs = MODELS[name]()
    return module.eval(), inputs


def feeds_for(graph: Graph, inputs: tuple) -> dict[str, np.ndarray]:
    return {name: t.numpy() for (name, _), t in zip(graph.inputs, inputs)}


def assert_matches_eager(graph: Graph, module: nn.Module, inputs: tuple, *, rel: float = 1e-4) -> None:
    """Run `graph` in the numpy interpreter and compare with torch eager: max abs err <= rel * output scale."""
    with torch.no_grad():
        expected = module(*inputs)
    expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
    got = run_graph(graph, feeds_for(graph, inputs))
    assert len(got) == len(expected)
    for k, (g, e) in enumerate(zip(got, expected)):
        e = e.numpy()
        assert g.shape == e.shape and g.dtype == e.dtype, f"output {k}: {g.shape} {g.dtype} vs {e.shape} {e.dtype}"
        scale = float(np.abs(e).max()) or 1.0
        err = float(np.abs(g.astype(np.float64) - e).max())
        assert err <= rel * scale, f"output {k}: max abs err {err:.3g} > {rel} x {scale:.3g}"


def assert_no_dead_nodes(graph: Graph) -> None:
    used = {i for n in graph.nodes for i in n.inputs} | set(graph.outputs)
    assert [n.name for n in graph.nodes if n.name not in used] == []


def import_and_check(module: nn.Module, inputs: tuple) -> Graph:
    """from_torch + verify + no dead nodes + numerics against eager."""
    graph = verify(from_torch(module, inputs))
    assert_no_dead_nodes(graph)
    assert_matches_eager(graph, module, inputs)
    return graph


# =========================================================================== models
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_matches_eager(name):
    module, inputs = build_model(name)
    graph = import_and_check(module, inputs)
    assert [t.shape for _, t in graph.inputs] == [tuple(t.shape) for t in inputs]


def test_resnet_ops():
    graph = verify(from_torch(*build_model("resnet")))
    ops = graph.op_counts()
    assert ops["conv2d"] == 6 and ops["batch_norm"] == 6 and ops["relu"] == 5
    pools = [n for n in graph.nodes if n.op == "pool2d"]
    assert [(n.attr("kind"), n.attr("kernel"), n.attr("strides"), n.attr("pads")) for n in pools] == [
        ("max", (3, 3), (2, 2), (1, 1, 1, 1))
    ]
    assert any(n.op == "reduce" and n.attr("kind") == "mean" and n.attr("axes") == (2, 3) for n in graph.nodes)
    assert ops["matmul"] == 1
    # parameters become constants named after the state dict
    assert "layers.1.down.0.weight" in graph.constants and graph.inputs[0][0] == "x"


def test_mobilenet_ops():
    graph = verify(from_torch(*build_model("mobilenet_v2")))
    convs = [n for n in graph.nodes if n.op == "conv2d"]
    depthwise = [n for n in convs if n.attr("groups") > 1]
    assert len(depthwise) == 3 and all(n.attr("groups") == n.type.shape[1] for n in depthwise)
    assert any(n.op == "clip" and n.attr("min") == 0.0 and n.attr("max") == 6.0 for n in graph.nodes)


def test_encoder_block_keeps_attention_whole():
    graph = verify(from_torch(*build_model("encoder_block")))
    ops = graph.op_counts()
    assert ops["attention"] == 1 and ops["layer_norm"] == 2 and "softmax" not in ops
    gelu = [n for n in graph.nodes if n.op == "gelu"]
    assert [n.attr("approximate") for n in gelu] == ["tanh"]
    (att,) = [n for n in graph.nodes if n.op == "attention"]
    assert att.attr("scale") == pytest.approx(1 / np.sqrt(8)) and not att.attr("causal")


def test_decoder_block_gqa_causal():
    graph = verify(from_torch(*build_model("decoder_block")))
    (att,) = [n for n in graph.nodes if n.op == "attention"]
    assert att.attr("causal") and len(att.inputs) == 3
    assert [graph.type_of(i).shape for i in att.inputs] == [(2, 4, 6, 8)] * 3  # kv heads repeated for GQA


def test_attention_variants():
    graph = verify(from_torch(*build_model("attention")))
    atts = [n for n in graph.nodes if n.op == "attention"]
    assert len(atts) == 3
    assert [n.attr("causal") for n in atts] == [True, False, False]
    assert len(atts[0].inputs) == 3 and len(atts[1].inputs) == 4 and atts[1].inputs[3] == "bias"
    assert atts[2].attr("scale") == pytest.approx(0.3)
    mask = graph.constants[atts[2].inputs[3]]  # the boolean buffer became an additive constant
    assert mask.dtype == np.float32 and set(np.unique(mask)) <= {0.0, -np.inf}


class CrossAttention(nn.Module):
    """Causal with fewer queries than keys (torch aligns the mask top-left) and grouped-query heads."""

    def forward(self, q, k, v):
        return (
            F.scaled_dot_product_attention(q, k, v, is_causal=True),
            F.scaled_dot_product_attention(q, k[:, :1], v[:, :1], enable_gqa=True),
        )


def test_attention_cross_causal_and_gqa():
    torch.manual_seed(1)
    inputs = (torch.randn(1, 2, 3, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4))
    graph = import_and_check(CrossAttention(), inputs)
    assert graph.op_counts()["attention"] == 2


# =========================================================================== op coverage
class OpZoo(nn.Module):
    """Many small ATen ops in one module; each output exercises a few converters."""

    def __init__(self):
        super().__init__()
        self.conv1d = nn.Conv1d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.bn1d = nn.BatchNorm1d(6, affine=False)
        self.gn = nn.GroupNorm(2, 4)
        self.register_buffer("table", torch.arange(12.0).reshape(3, 4))

    def forward(self, x, img, idx):
        a, b, c, _unused = x.split([2, 3, 2, 1], dim=-1)
        outs = [
            torch.cat([c, a, b], -1)[:, 1:3, ::2].select(1, 0),
            x.transpose(1, 2).contiguous().view(2, -1),
            x.unsqueeze(1).expand(2, 2, 3, 8).squeeze(0).repeat(1, 2, 1, 1),
            F.pad(x, (1, 2, 0, 1), value=0.5),
            F.hardsigmoid(x) + F.silu(x) + F.leaky_relu(x, 0.2) + F.relu6(x) + torch.sigmoid(x) * torch.tanh(x),
            torch.where(x > 0, x, x * 0.1) + x.masked_fill(x < -1, 2.0) + x.clamp(-0.5, 0.5) + x.clamp(min=0.1),
            x.abs().sqrt() + (x.abs() + 1).rsqrt() + x.exp() - x.neg().erf() + x.pow(2) + x.abs().pow(1.5) + 2 ** x,
            x / 2 + torch.div(x, 0.7, rounding_mode="floor") + torch.div(x, 0.7, rounding_mode="trunc") - 3 * x,
            (x > 0.5).float() + (x <= 0).to(torch.int32) + (x != x.round()).long(),
            x.sum() + x.mean(dim=(0, 1)) + x.amax(-1, keepdim=True) + x.max(-1).values.unsqueeze(-1),
            x.var(-1, keepdim=True) + x.std(dim=1, keepdim=True) + x.amin(1, keepdim=True),
            torch.softmax(x, 1) + torch.log_softmax(x, -1),
            self.bn1d(self.conv1d(img.flatten(2))),
            F.max_pool1d(img.flatten(2), 3, 2, ceil_mode=True) + F.avg_pool1d(img.flatten(2), 3, 2, ceil_mode=True),
            F.avg_pool2d(img, 3, 2, 1) + F.avg_pool2d(img, 3, 2, 1, count_include_pad=False),
            F.adaptive_avg_pool2d(img, 2) + F.adaptive_max_pool2d(img, (2, 1)),
            self.gn(img),
            self.table[idx] + self.table.index_select(1, idx[:2]).sum() + torch.ones(4) * torch.full((4,), 2.0),
            idx.sum(0) + idx // 2,
            torch.matmul(x, x.transpose(-1, -2)) + torch.bmm(x, x.transpose(1, 2)) @ torch.eye(3),
            ((x > 0) & (x < 1)) | ~(x > 0.5) ^ torch.logical_and(x > -1, x < 0) | torch.logical_not(x < 2),
            x.flip(0, 2) + torch.minimum(x, x.flip(1)) + torch.maximum(x, 1 - x) + x.clamp(x * 0.5, x * 2 + 1),
            x % 0.7 + torch.fmod(x, 0.7) + x.ceil() + x.floor().cos() + x.sin() + x.abs().log() + (x + 5).reciprocal(),
            x.prod(1) + x.min() + x.max() + x.mean() + x.min(1).values + torch.full_like(x[:, 0], 3),
            torch.arange(0.5, 4.0, 0.5).unflatten(0, (1, 7)),
        ]
        return tuple(outs)


def test_op_zoo_matches_eager():
    torch.manual_seed(0)
    module = _randomize_norms(OpZoo()).eval()
    inputs = (torch.randn(2, 3, 8), torch.randn(2, 4, 4, 4), torch.tensor([2, 0, 1]))
    graph = import_and_check(module, inputs)
    ops = graph.op_counts()
    assert {"conv2d", "batch_norm", "layer_norm", "pool2d", "gather", "concat", "slice", "pad", "where"} <= set(ops)


def test_round_half_to_even_and_integer_ops():
    class M(nn.Module):
        def forward(self, x, n):
            return x.round(), n // 3, n * 2 - 1, (n > 2) & (n < 7), n.float() / 4

    x = torch.tensor([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.4, -0.6, 3.5, 1e6 + 0.5])
    n = torch.tensor([-7, -1, 0, 4, 9, 11, 3, 5, 6, 8])
    import_and_check(M(), (x, n))


# =========================================================================== errors, persistence, packaging
class Unsupported(nn.Module):
    def forward(self, x):
        return torch.fft.fft(x).real + torch.linalg.inv(x) + torch.cumsum(x, 0)


def test_unsupported_ops_listed_together():
    with pytest.raises(UnsupportedOpError) as info:
        from_torch(Unsupported(), (torch.randn(4, 4),))
    msg = str(info.value)
    for op, node in (("aten._fft_r2c.default", "_fft_r2c"), ("aten.linalg_inv_ex.default", "linalg_inv_ex"),
                     ("aten.cumsum.default", "cumsum")):
        assert f"{op} (node {node!r})" in msg


def test_unsupported_attribute_names_the_node():
    class Transposed(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(2, 2, 2, stride=2)

        def forward(self, x):
            return self.up(x)

    with pytest.raises(UnsupportedOpError, match=r"aten.convolution.default \(node 'convolution'\): transposed"):
        from_torch(Transposed(), (torch.randn(1, 2, 4, 4),))


def test_export_failure_is_a_load_error():
    class Bad(nn.Module):
        def forward(self, x):
            return x.t()  # 3-D input: fails while tracing

    with pytest.raises(ModelLoadError, match="torch.export failed"):
        from_torch(Bad(), (torch.randn(2, 3, 4),))


def test_pt2_round_trip(tmp_path):
    module, inputs = build_model("mobilenet_v2")
    path = tmp_path / "mobilenet.pt2"
    torch.export.save(torch.export.export(module, inputs), path)
    graph = verify(load_pt2(path, name="mnv2"))
    assert graph.name == "mnv2"
    assert [t.shape for _, t in graph.inputs] == [(1, 3, 16, 16)]
    assert_matches_eager(graph, module, inputs)
    assert graph.fingerprint() == from_torch(module, inputs, name="mnv2").fingerprint()


def test_pt2_saved_after_full_decomposition(tmp_path):
    """A program decomposed with torch's default table has SDPA spelled out (with _safe_softmax's any.dim)."""
    module, inputs = build_model("attention")
    path = tmp_path / "decomposed.pt2"
    torch.export.save(torch.export.export(module, inputs).run_decompositions(), path)
    graph = verify(load_pt2(path))
    assert "attention" not in graph.op_counts() and "softmax" in graph.op_counts()
    assert_matches_eager(graph, module, inputs)


def test_pt2_dynamic_shape_is_a_shape_error(tmp_path):
    module, inputs = build_model("encoder_block")
    batch = torch.export.Dim("batch", min=2, max=8)
    path = tmp_path / "dyn.pt2"
    torch.export.save(torch.export.export(module, inputs, dynamic_shapes=({0: batch},)), path)
    with pytest.raises(ShapeError, match="dynamic shape"):
        load_pt2(path)


def test_pt2_bad_files(tmp_path):
    with pytest.raises(ModelLoadError, match="not found"):
        load_pt2(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"definitely not a zip archive")
    with pytest.raises(ModelLoadError, match="not a readable"):
        load_pt2(junk)


def test_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import tilecraft, tilecraft.frontends.torch as tf\n"
        "try:\n    tf.from_torch(None, ())\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ImportError: tilecraft's PyTorch frontend needs torch" in out.stdout
