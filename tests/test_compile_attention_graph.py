"""torch.compile traces the attention switch to one graph, whatever backend is asked for.

The backend decision (``attention.backends.choose``) looks at importlib, an lru_cache, the GPU's capability and,
for "auto", runs a parity probe: which of these dynamo can trace depends on the torch version, and a check it
cannot trace breaks the graph once per attention layer. So the availability check is replaced here by one that
dynamo can never trace (it calls ``torch._dynamo.graph_break()`` first): the decision must stay out of the graph
whatever it does. The graphs are counted with a recording compiler backend; without a GPU the Triton kernel runs
through the interpreter (tests/conftest.py sets TRITON_INTERPRET=1), where it is an opaque custom op in the graph.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from impulse_attn.attention import ViTAttention, attention, backends as attention_backends
from impulse_attn.attention import triton_flash


def _graphs(fn, *args):
    """(graphs dynamo handed to the compiler, result) for one call of ``torch.compile(fn)``."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=record)(*args)
    return graphs, out


def _kernel_calls(gm) -> int:
    return sum(1 for node in gm.graph.nodes if node.op == "call_function" and "flash_attention_fwd" in str(node.target))


def _qkv(dtype=torch.float32, n=11, d=16):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(2, 2, n, d, generator=g, dtype=dtype) for _ in range(3)]


def _triton_runs():
    return triton_flash.unavailable_reason(*_qkv()) is None


@pytest.fixture(autouse=True)
def fresh_decisions(monkeypatch):
    real = attention_backends.triton_unavailable_reason

    def untraceable_check(q, k, v):
        torch._dynamo.graph_break()
        return real(q, k, v)

    monkeypatch.setattr(attention_backends, "triton_unavailable_reason", untraceable_check)
    attention_backends.reset()
    yield
    attention_backends.reset()
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["triton", "sdpa", "reference", "auto"])
def test_attention_traces_to_one_graph(backend):
    if backend == "triton" and not _triton_runs():
        pytest.skip("the Triton kernel cannot run here")
    q, k, v = _qkv()

    def two_layers(q, k, v):  # two calls, as two attention layers make them
        return attention(attention(q, k, v, 0.25, backend) + q, k, v, 0.25, backend)

    graphs, out = _graphs(two_layers, q, k, v)
    assert len(graphs) == 1, f"{len(graphs)} graphs: the backend choice broke the graph"
    torch.testing.assert_close(out, two_layers(q, k, v), rtol=1e-5, atol=1e-6)
    if backend == "triton":
        assert _kernel_calls(graphs[0]) == 2, "the Triton op is not in the graph once per call"


def test_model_with_three_triton_layers_traces_to_one_graph():
    if not _triton_runs():
        pytest.skip("the Triton kernel cannot run here")
    torch.manual_seed(0)
    model = nn.Sequential(*[ViTAttention(16, num_heads=2, head_dim=8, grid_size=(3, 3), attention_backend="triton")
                            for _ in range(3)])
    x = torch.randn(2, 9, 16)
    graphs, out = _graphs(lambda x: model(x).square().sum(), x)
    assert len(graphs) == 1, f"{len(graphs)} graphs for 3 layers"
    assert _kernel_calls(graphs[0]) == 3
    explained = torch._dynamo.explain(lambda x: model(x).square().sum())(x)
    assert explained.graph_break_count == 0, explained.break_reasons


def test_auto_under_compile_takes_the_probed_kernel(monkeypatch):
    # With the policy listing the kernel, "auto" runs its probe at trace time (outside the graph), once.
    if not _triton_runs():
        pytest.skip("the Triton kernel cannot run here")
    monkeypatch.setitem(attention_backends.AUTO_ORDER, "cpu", ("triton", "sdpa"))
    probes = []
    real = attention_backends._probe
    monkeypatch.setattr(attention_backends, "_probe", lambda *a: probes.append(a[0]) or real(*a))
    q, k, v = _qkv()
    graphs, _ = _graphs(lambda q, k, v: attention(q, k, v, 0.25, "auto"), q, k, v)
    assert len(graphs) == 1 and _kernel_calls(graphs[0]) == 1
    assert probes == ["triton"]


def test_an_explicit_backend_that_cannot_run_still_raises_under_compile(monkeypatch):
    monkeypatch.setattr(attention_backends, "triton_unavailable_reason", lambda q, k, v: "planted: no GPU")
    q, k, v = _qkv()
    with pytest.raises(Exception, match="attention backend 'triton' cannot run here: planted: no GPU"):
        _graphs(lambda q, k, v: attention(q, k, v, 0.25, "triton"), q, k, v)
