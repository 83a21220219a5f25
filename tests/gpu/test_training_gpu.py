"""SimpleViT training on a GPU with attention_backend "triton" and "sdpa": mixed-precision (bf16 autocast) Adam steps
in modes I, II and III, torch.compile of the forward and backward (one cold compile per backend, which also proves
one graph), and the training command on CUDA. Skipped without CUDA; collected everywhere, so `make gpu-check
DRY_RUN=1` lists them and counts what they compile (LAUNCHES).

Error model of the mixed-precision comparison (test_amp_steps_match_between_backends)
------------------------------------------------------------------------------------
Under bf16 autocast the q, k, v that reach attention are bfloat16, and at a given step they are the same for both
backends: every other layer is the same computation on the same values. Both fused kernels (the Triton kernel;
SDPA's flash, cuDNN or memory-efficient kernel) compute softmax(s·q kᵀ)·v with float32 logits, float32 softmax
statistics and float32 accumulation, round P to bf16 for the P·V product and round O to bf16. Per element of O
each lands within about two bf16 roundings (u = 2⁻⁸ relative) of the exact attention of those inputs, and so they
differ from each other by about as much. How far that moves a loss depends on everything downstream (and, after
the first step, on Adam's updates), which no closed formula gives; so the test measures that scale in the same
run, from the same initial weights and batch, with two more runs:

- truth: attention computed in float32 from the same bf16 q, k, v outside autocast and rounded to bf16 once (the
  correctly rounded result every bf16 kernel aims at);
- plain: attention as a framework computes it without a fused kernel, the "reference" backend under autocast:
  bf16 q·kᵀ (so the logits themselves are rounded to bf16), float32 softmax, bf16 P·V.

The flash-attention convention (which tests/gpu/test_triton_attention_gpu.py applies to O and its gradients) then
reads, at every step k and for each backend X, on the per-sample losses L(k, b) of the batch:

    max_b |L_X(k, b) − L_truth(k, b)|  ≤  2 · max_{j ≤ k} max_b |L_plain(j, b) − L_truth(j, b)|  +  1e-5

Plain carries every rounding the fused kernels make plus the rounding of the logits, so it is the larger error
(by several times at these logit sizes), and 2× leaves room for chance. 1e-5 is the float32 evaluation of a
cross-entropy near 2.3 (a few ulps), far below any bf16 effect. Per-sample maxima over 64 images keep the
yardstick from vanishing by cancellation, as a mean loss can, and the running maximum over steps lets a step
inherit the earlier steps' perturbations. The two backends' mean losses then agree within 4·yardstick + 2e-5,
which is asserted as well. A wrong kernel (a dropped key block, a wrong softmax row, a wrong gradient) moves the
losses by far more than bf16 rounding of the logits does.

In modes II and III the map does not depend on the input, and every backend but "reference" applies it through
SDPA on the batch-folded values (functional.shared_map_attention): there the comparison covers the AMP path of that
code (mode III's float32 free maps are cast to bf16), and the test asserts that the Triton kernel was not called;
in mode I it asserts that the kernel ran once per layer and step, on bf16 inputs.
"""
from __future__ import annotations

import copy
import json
import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from impulse_attn import SimpleViT
from impulse_attn.attention import backends as attention_backends, functional
from impulse_attn.attention.reference import reference_attention

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/gpu_check/compiles.py
from benchmarks.gpu_check.compiles import Call, Inductor, pin_for  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # launch_guard.py
from launch_guard import declared_launches_and_no_pin_left  # noqa: E402,F401  (autouse)

CUDA = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(not CUDA, reason="no CUDA GPU: SimpleViT on the Triton kernel is tested on the CPU "
                                                 "in tests/test_triton_training_parity.py (interpreter, float64)")

PAPER = dict(image_size=32, patch_size=2, num_classes=10, dim=512, depth=6, num_heads=8, head_dim=64, mlp_dim=512)
# Head dim 64 and the 16x16 grid, as in the paper, so the kernels autotuned for the paper's shape serve here too.
SMALL = dict(image_size=32, patch_size=2, num_classes=10, dim=128, depth=2, num_heads=2, head_dim=64, mlp_dim=256)
BATCH, STEPS, LR = 64, 4, 1e-3
LOSS_FLOOR = 1e-5
# The training command's model: two heads, not one. Triton specializes an integer argument equal to 1, so one head
# would compile every kernel anew; with two, the kernels are the attention stage's (H ≠ 1, N = 256, d = 64).
COMMAND_HEADS = 2
BF16 = torch.bfloat16
# SimpleViT's attention inputs: q and k halves of one projection, v its own, the gradient through the head merge.
_MODEL = dict(layout="qk", grad="merged")


def _compiled_model_calls(backend):
    what = (f"SimpleViT ({SMALL['depth']} blocks, {SMALL['num_heads']} heads of {SMALL['head_dim']}, 16×16 tokens), "
            f"forward and backward under bf16 autocast, attention backend {backend!r}")
    eager = [Call(32, SMALL["num_heads"], 256, SMALL["head_dim"], BF16, pin_for(BF16, SMALL["head_dim"]), **_MODEL)]
    return [Inductor(what)] + (eager if backend == "triton" else [])


LAUNCHES = {
    # mode I runs the kernel (autotuned, as training does) per layer and step; II and III apply maps through sdpa
    "test_amp_steps_match_between_backends": lambda mode: [Call(BATCH, PAPER["num_heads"], 256, PAPER["head_dim"],
                                                                BF16, None, **_MODEL)] if mode == "I" else [],
    "test_torch_compile_is_one_graph_and_matches_eager": _compiled_model_calls,
    # training steps, then evaluation (forward only), each batch of 64 synthetic 32×32 images in 16×16 patches
    "test_training_command_runs_on_cuda": lambda backend: [
        Call(64, COMMAND_HEADS, 256, 64, BF16, None, **_MODEL),
        Call(64, COMMAND_HEADS, 256, 64, BF16, None, backward=False, **_MODEL)] if backend == "triton" else [],
}


@pytest.fixture(autouse=True)
def _no_tf32():
    """The float32 runs must be float32 (TF32 would round matmul inputs to 10 bits)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _triton_module():
    from impulse_attn.attention import triton_flash as ta
    if ta._INTERPRETER:
        pytest.skip("TRITON_INTERPRET=1 is set: these tests are about the compiled kernels")
    return ta


def _batch(n: int, image_size: int = 32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, image_size, image_size, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return x.cuda(), y.cuda()


def _exact_attention(q, k, v, scale):
    """The truth of the error model: float32 attention of the given (bf16) q, k, v, outside autocast, rounded once."""
    with torch.autocast("cuda", enabled=False):
        out = reference_attention(q.float(), k.float(), v.float(), scale)
    return out.to(v.dtype)


def _per_sample_losses(model, backend, x, y, exact=False) -> torch.Tensor:
    """(STEPS, BATCH) float64: each step's per-sample cross-entropy before that step's Adam update, the forward
    under bf16 autocast and the loss on float32 logits, as impulse_attn.training.loop does."""
    m = copy.deepcopy(model).cuda()
    m.set_attention_backend(backend)
    opt = torch.optim.Adam(m.parameters(), lr=LR)
    rows = []
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        if exact:
            mp.setattr(functional, "reference_attention", _exact_attention)          # shared maps (II, III)
            mp.setattr(attention_backends, "reference_attention", _exact_attention)  # per-sample maps (I)
        # Modes II/III with "triton": the shared-map path warns that it applies the map through sdpa.
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(STEPS):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = m(x)
            per_sample = F.cross_entropy(logits.float(), y, reduction="none")
            opt.zero_grad(set_to_none=True)
            per_sample.mean().backward()
            opt.step()
            rows.append(per_sample.detach().double().cpu())
    return torch.stack(rows)


@pytest.fixture(scope="module")
def paper_models():
    built = {}

    def get(mode):
        if mode not in built:
            torch.manual_seed(0)
            built[mode] = SimpleViT(**PAPER, mode=mode, init="impulse", attention_backend="sdpa")
        return built[mode]
    return get


@pytest.mark.parametrize("mode", ["I", "II", "III"])
def test_amp_steps_match_between_backends(paper_models, mode):
    """The paper's model (16x16 tokens, 8 heads of 64), bf16 autocast, 4 Adam steps on one batch of 64: "triton"
    and "sdpa" within the error model of the module docstring, step by step."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("bfloat16 autocast needs compute capability 8.0 or newer")
    ta = _triton_module()
    model = paper_models(mode)
    x, y = _batch(BATCH)
    calls = []
    real = ta.flash_attention

    def counted(q, *args, **kwargs):
        calls.append(q.dtype)
        return real(q, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ta, "flash_attention", counted)
        triton = _per_sample_losses(model, "triton", x, y)
    sdpa = _per_sample_losses(model, "sdpa", x, y)
    truth = _per_sample_losses(model, "reference", x, y, exact=True)
    plain = _per_sample_losses(model, "reference", x, y)

    if mode == "I":
        assert calls == [torch.bfloat16] * (PAPER["depth"] * STEPS), \
            f"the Triton kernel ran {len(calls)} times on {set(calls)}, expected once per layer and step in bf16"
    else:
        assert not calls, "input-independent maps are applied through sdpa; the Triton kernel must not run"
    assert truth[1:].mean(dim=1).min() < truth[0].mean(), "the steps do not train, so the comparison says little"
    for name, run in (("triton", triton), ("sdpa", sdpa), ("plain", plain)):
        assert torch.isfinite(run).all(), f"{name}: non-finite losses"

    yardstick = (plain - truth).abs().amax(dim=1).cummax(dim=0).values
    for name, run in (("triton", triton), ("sdpa", sdpa)):
        err = (run - truth).abs().amax(dim=1)
        bound = 2 * yardstick + LOSS_FLOOR
        assert (err <= bound).all(), (f"mode {mode}, {name}: per-sample loss error against float32 attention "
                                      f"{err.tolist()} exceeds 2 x plain bf16 attention's + 1e-5: {bound.tolist()}")
    gap = (triton.mean(dim=1) - sdpa.mean(dim=1)).abs()
    bound = 4 * yardstick + 2 * LOSS_FLOOR
    assert (gap <= bound).all(), (f"mode {mode}: mean losses of triton {triton.mean(dim=1).tolist()} and sdpa "
                                  f"{sdpa.mean(dim=1).tolist()} differ by {gap.tolist()} > {bound.tolist()}")


# --- torch.compile ------------------------------------------------------------------------------------------
# bf16 autocast: a fused kernel may keep in float32 what eager rounds to bf16 between two ops, so values differ by
# bf16 roundings (u = 2⁻⁸) at a handful of places per block: 2⁻⁵ of the scale for the logits, 2⁻⁴ for gradients
# (which pass through more of them). A compiled graph that dropped or garbled the attention changes the q/k/v and
# output-projection gradients by their own size. Matmuls are the same cuBLAS calls in both (TF32 off), and the
# attention kernels are the same config.
COMPILE_RTOL = {True: (2 ** -5, 2 ** -4)}  # amp -> (logits, gradients)


def _logits_and_grads(model, params, x, y, amp):
    for p in params.values():
        p.grad = None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    return logits.detach().float(), {n: p.grad.detach().float().clone() for n, p in params.items()}


def _small_model(backend):
    if backend == "triton":
        _triton_module()
    torch._dynamo.reset()
    torch.manual_seed(0)
    return SimpleViT(**SMALL, init="impulse", attention_backend=backend).cuda()


@pytest.mark.parametrize("backend", ["sdpa", "triton"])
def test_torch_compile_is_one_graph_and_matches_eager(backend):
    """One cold inductor compile per backend, of the forward and backward under bf16 autocast (what ``--compile``
    training runs). fullgraph=True proves the model traces to one graph (--compile is only worth it if a break at
    every attention call, the backend switch or the availability checks, does not hand each layer back to
    Python); that graph holds the backend's attention; and the compiled logits and gradients match eager."""
    if not torch.cuda.is_bf16_supported():
        pytest.skip("bfloat16 autocast needs compute capability 8.0 or newer")
    import contextlib
    pin = contextlib.nullcontext()
    if backend == "triton":   # one config per kernel for inductor to compile, not the autotuner's nine
        pin = _triton_module().pinned_config(*pin_for(BF16, SMALL["head_dim"]))
    graphs = []
    inductor = torch._dynamo.lookup_backend("inductor")

    def counting_inductor(gm, example_inputs):
        graphs.append(gm.code)
        return inductor(gm, example_inputs)

    with pin:
        eager = _small_model(backend)
        twin = copy.deepcopy(eager)
        compiled = torch.compile(twin, backend=counting_inductor, fullgraph=True)
        x, y = _batch(32)
        want_logits, want = _logits_and_grads(eager, dict(eager.named_parameters()), x, y, amp=True)
        got_logits, got = _logits_and_grads(compiled, dict(twin.named_parameters()), x, y, amp=True)
    torch._dynamo.reset()
    assert len(graphs) == 1, f"{len(graphs)} graphs compiled for one model"
    markers = ("flash_attention_fwd",) if backend == "triton" else ("scaled_dot_product_attention",)
    assert any(m in graphs[0] for m in markers), f"the compiled graph holds none of {markers}"
    rtol_logits, rtol_grads = COMPILE_RTOL[True]
    assert torch.isfinite(got_logits).all()
    err = (got_logits - want_logits).abs().max().item()
    assert err <= rtol_logits * want_logits.abs().max().item(), f"logits differ by {err:.3e}"
    top = max(g.abs().max().item() for g in want.values())
    for name, g in want.items():
        assert torch.isfinite(got[name]).all(), f"{name}: non-finite gradient"
        err = (got[name] - g).abs().max().item()
        bound = rtol_grads * g.abs().max().item() + 1e-6 * top
        assert err <= bound, f"{name}: compiled gradient differs by {err:.3e} > {bound:.3e}"


# --- the training command -----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_training_command_runs_on_cuda(tmp_path, backend):
    """`impulse-attn train` on CUDA with mixed precision: data to the device, autocast, evaluation, checkpoint."""
    if backend == "triton":
        _triton_module()
    from impulse_attn import cli
    out = tmp_path / "run"
    code = cli.main(["train", "--dataset", "synthetic", "--synthetic-train", "256", "--synthetic-test", "64",
                     "--dim", "64", "--depth", "2", "--num-heads", str(COMMAND_HEADS), "--head-dim", "64",
                     "--mlp-dim", "128",
                     "--epochs", "2", "--batch-size", "64", "--lr", "1e-3", "--device", "cuda", "--amp", "on",
                     "--attention-backend", backend, "--no-progress", "--out", str(out)])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in records[1:])
    assert json.loads((out / "run.json").read_text())["device"].startswith("cuda")
    assert (out / "checkpoint.pt").exists()
