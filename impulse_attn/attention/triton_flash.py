"""Fused non-causal attention in Triton (flash-style), forward and backward, as the ops
``impulse_attn::flash_attention_fwd`` and ``impulse_attn::flash_attention_bwd``.

Forward: one program per (batch·head, block of BLOCK_M query rows) streams over key/value blocks with an online
softmax in fp32 (fp64 for fp64 inputs), writes O and the per-row log-sum-exp L = log Σ_j exp(scale·q·k_j).
Backward (non-causal, no atomics): a preprocess computes δ_i = Σ_d dO_id·O_id; one kernel owns a block of keys and
accumulates dK, dV over every query block; another owns a block of queries and accumulates dQ over every key block.
Both recompute P = exp(scale·Q Kᵀ − L) from the saved L, so no N×N tensor is ever stored.

Any N (the last block is masked: its key columns get −inf logits, its rows are not stored), head dims 1..128 (the
block is padded to a power of two ≥ 16 with zero columns, which change no dot product), any finite scale (the
running maximum is taken after scaling, so negative or zero scales are fine). The exponentials are base 2 with
log2(e) folded into the scale, except for float64, which uses exp so that no float32 constant limits its accuracy.

Inputs may be non-contiguous: every (batch, head, row) stride is passed to the kernels; a non-unit stride of the
head dim is made contiguous first (the kernels assume unit stride there so loads vectorize).

Configs: on CUDA the kernels are autotuned over a small space per dtype class (``TUNING_SPACE``, pruned for sm_90 at
ViT shapes by the rule written above it). One config can be pinned with ``pinned_config(...)`` or the environment
variable IMPULSE_ATTN_TRITON_CONFIG, e.g.
``"BLOCK_M=64,BLOCK_N=64,num_warps=4,num_stages=3"``; under the interpreter (TRITON_INTERPRET=1) a 16×16 config is
always pinned, as autotuning there would only time numpy.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Iterator, Optional

import torch
import triton
import triton.language as tl
from torch._subclasses.fake_tensor import is_fake
from torch.library import triton_op, wrap_triton
from triton.runtime.interpreter import InterpretedFunction

__all__ = ["flash_attention", "flash_attention_with_lse", "unavailable_reason", "pinned_config", "autotuning",
           "active_config", "tuning_space", "TUNING_SPACE", "MAX_HEAD_DIM", "CONFIG_ENV"]

MAX_HEAD_DIM = 128
CONFIG_ENV = "IMPULSE_ATTN_TRITON_CONFIG"
_LOG2E = 1.4426950408889634
_CUDA_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INTERPRETER_DTYPES = (torch.float16, torch.float32, torch.float64)  # numpy has no bfloat16
_INTERPRETER_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, num_warps=1, num_stages=1)

# Tests set this to True so every output buffer starts as NaN: an element the kernels fail to write shows up.
_poison_outputs = False
_pinned: Optional[dict] = None
_pinned_kernel: Optional[str] = None   # set: _pinned applies to this kernel only
_AUTOTUNE = {}   # the value of _pinned inside ``autotuning()``: autotune whatever the environment pins


# --------------------------------------------------------------------------------------------------- kernels


@triton.jit
def _exp(x, BASE2: tl.constexpr):
    return tl.math.exp2(x) if BASE2 else tl.exp(x)


@triton.jit
def _log(x, BASE2: tl.constexpr):
    return tl.math.log2(x) if BASE2 else tl.log(x)


@triton.jit
def _load_rows(ptrs, rows, N, cols, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_ROWS: tl.constexpr):
    # A (rows, BLOCK_D) tile; rows ≥ N and the padding columns ≥ HEAD_DIM read as zero.
    if MASK_ROWS:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs, mask=rows[:, None] < N, other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows[:, None] < N) & (cols[None, :] < HEAD_DIM), other=0.0)
    else:
        if HEAD_DIM == BLOCK_D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=cols[None, :] < HEAD_DIM, other=0.0)
    return x


@triton.jit
def _store_rows(ptrs, x, rows, N, cols, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    if HEAD_DIM == BLOCK_D:
        tl.store(ptrs, x, mask=rows[:, None] < N)
    else:
        tl.store(ptrs, x, mask=(rows[:, None] < N) & (cols[None, :] < HEAD_DIM))


@triton.jit
def _load_vec(ptr, rows, N, MASK_ROWS: tl.constexpr):
    if MASK_ROWS:
        x = tl.load(ptr + rows, mask=rows < N, other=0.0)
    else:
        x = tl.load(ptr + rows)
    return x


@triton.jit
def _fwd_step(acc, l_i, m_i, q, K, V, start_n, N, s_kn, s_vn, qk_scale, offs_n, offs_d,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_N: tl.constexpr, BASE2: tl.constexpr,
              PRECISION: tl.constexpr, ACC: tl.constexpr):
    rows = start_n + offs_n
    k = _load_rows(K + rows[:, None] * s_kn + offs_d[None, :], rows, N, offs_d, HEAD_DIM, BLOCK_D, MASK_N)
    s = tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale
    if MASK_N:
        s = tl.where(rows[None, :] < N, s, float("-inf"))
    # Every block holds at least one real key (the tail block starts below N), so m_new is finite.
    m_new = tl.maximum(m_i, tl.max(s, 1))
    p = _exp(s - m_new[:, None], BASE2)
    rescale = _exp(m_i - m_new, BASE2)
    l_i = l_i * rescale + tl.sum(p, 1)
    v = _load_rows(V + rows[:, None] * s_vn + offs_d[None, :], rows, N, offs_d, HEAD_DIM, BLOCK_D, MASK_N)
    acc = tl.dot(p.to(v.dtype), v, acc * rescale[:, None], input_precision=PRECISION, out_dtype=ACC)
    return acc, l_i, m_new


@triton.jit
def _rows_ptr(X, b, h, s_b, s_h, s_n, rows, offs_d):
    """Pointers to rows ``rows`` (all head-dim columns) of head h of batch b in X (B, H, N, d)."""
    return X + b * s_b + h * s_h + rows[:, None] * s_n + offs_d[None, :]


@triton.jit
def _load_head_rows(X, b, h, s_b, s_h, s_n, rows, N, offs_d, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr):
    """Rows ``rows`` of head h of batch b of X (B, H, N, d), masked to N rows and HEAD_DIM columns."""
    return _load_rows(_rows_ptr(X, b, h, s_b, s_h, s_n, rows, offs_d), rows, N, offs_d, HEAD_DIM, BLOCK_D, True)


@triton.jit
def _program_block(N, H, BLOCK: tl.constexpr):
    """This program's (batch·head index, batch, head, row offsets of its block): a 1-D grid with the blocks of
    one head adjacent, so they share that head's operands in L2."""
    num = tl.cdiv(N, BLOCK)
    pid = tl.program_id(0)
    bh = pid // num
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64), (pid % num) * BLOCK + tl.arange(0, BLOCK)


@triton.jit
def _attn_fwd(Q, K, V, O, LSE, qk_scale,
              s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_ob, s_oh, s_on,
              H, N,
              HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BASE2: tl.constexpr, PRECISION: tl.constexpr,
              ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    bh, b, h, offs_m = _program_block(N, H, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_head_rows(Q, b, h, s_qb, s_qh, s_qn, offs_m, N, offs_d, HEAD_DIM, BLOCK_D)
    K += b * s_kb + h * s_kh
    V += b * s_vb + h * s_vh

    m_i = tl.full([BLOCK_M], float("-inf"), ACC)
    l_i = tl.zeros([BLOCK_M], ACC)
    acc = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K, V, start_n, N, s_kn, s_vn, qk_scale, offs_n, offs_d,
                                  HEAD_DIM, BLOCK_D, False, BASE2, PRECISION, ACC)
    if n_full < N:
        acc, l_i, m_i = _fwd_step(acc, l_i, m_i, q, K, V, n_full, N, s_kn, s_vn, qk_scale, offs_n, offs_d,
                                  HEAD_DIM, BLOCK_D, True, BASE2, PRECISION, ACC)

    out = acc / l_i[:, None]
    _store_rows(_rows_ptr(O, b, h, s_ob, s_oh, s_on, offs_m, offs_d), out.to(O.dtype.element_ty),
                offs_m, N, offs_d, HEAD_DIM, BLOCK_D)
    lse = m_i + _log(l_i, BASE2)
    if BASE2:
        lse = lse * 0.6931471805599453  # stored in natural-log units, whatever the base used inside
    tl.store(LSE + bh.to(tl.int64) * N + offs_m, lse, mask=offs_m < N)


@triton.jit
def _attn_bwd_delta(O, DO, DELTA, s_ob, s_oh, s_on, s_db, s_dh, s_dn, H, N,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr):
    bh, b, h, offs_m = _program_block(N, H, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    o = _load_head_rows(O, b, h, s_ob, s_oh, s_on, offs_m, N, offs_d, HEAD_DIM, BLOCK_D)
    do = _load_head_rows(DO, b, h, s_db, s_dh, s_dn, offs_m, N, offs_d, HEAD_DIM, BLOCK_D)
    delta = tl.sum(o.to(ACC) * do.to(ACC), 1)
    tl.store(DELTA + bh.to(tl.int64) * N + offs_m, delta, mask=offs_m < N)


@triton.jit
def _dkdv_step(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, N, s_qn, s_dn, qk_scale, offs_m, offs_d,
               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_M: tl.constexpr, BASE2: tl.constexpr,
               PRECISION: tl.constexpr, ACC: tl.constexpr):
    rows = start_m + offs_m
    q = _load_rows(Q + rows[:, None] * s_qn + offs_d[None, :], rows, N, offs_d, HEAD_DIM, BLOCK_D, MASK_M)
    lse = _load_vec(LSE, rows, N, MASK_M)
    if BASE2:
        lse = lse * 1.4426950408889634
    # Transposed tiles (keys × queries) so that the reductions over queries are dots with Q and dO.
    p_t = _exp(tl.dot(k, tl.trans(q), input_precision=PRECISION, out_dtype=ACC) * qk_scale - lse[None, :], BASE2)
    if MASK_M:
        p_t = tl.where(rows[None, :] < N, p_t, 0.0)
    do = _load_rows(DO + rows[:, None] * s_dn + offs_d[None, :], rows, N, offs_d, HEAD_DIM, BLOCK_D, MASK_M)
    dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PRECISION, out_dtype=ACC)
    delta = _load_vec(DELTA, rows, N, MASK_M)
    dp_t = tl.dot(v, tl.trans(do), input_precision=PRECISION, out_dtype=ACC)
    ds_t = p_t * (dp_t - delta[None, :])
    dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PRECISION, out_dtype=ACC)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, qk_scale, sm_scale,
                   s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn,
                   s_dkb, s_dkh, s_dkn, s_dvb, s_dvh, s_dvn,
                   H, N,
                   HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BASE2: tl.constexpr, PRECISION: tl.constexpr,
                   ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program per (batch·head, block of BLOCK_N keys); it loops over all queries in blocks of BLOCK_M.
    # A deliberate mirror of _attn_bwd_dq (same arguments and preamble, the loop over the other axis): the two
    # passes of flash attention's backward, kept apart so each has its own autotuned config space.
    bh, b, h, offs_n = _program_block(N, H, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    k = _load_head_rows(K, b, h, s_kb, s_kh, s_kn, offs_n, N, offs_d, HEAD_DIM, BLOCK_D)
    v = _load_head_rows(V, b, h, s_vb, s_vh, s_vn, offs_n, N, offs_d, HEAD_DIM, BLOCK_D)
    Q += b * s_qb + h * s_qh
    DO += b * s_db + h * s_dh
    LSE += bh.to(tl.int64) * N
    DELTA += bh.to(tl.int64) * N

    # Rows of a tail key block beyond N may end up inf/NaN (zero keys against a very negative L): rows of dK, dV
    # never mix, and those rows are not stored.
    dk = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    dv = tl.zeros([BLOCK_N, BLOCK_D], ACC)
    m_full = (N // BLOCK_M) * BLOCK_M
    for start_m in range(0, m_full, BLOCK_M):
        dk, dv = _dkdv_step(dk, dv, k, v, Q, DO, LSE, DELTA, start_m, N, s_qn, s_dn, qk_scale, offs_m, offs_d,
                            HEAD_DIM, BLOCK_D, False, BASE2, PRECISION, ACC)
    if m_full < N:
        dk, dv = _dkdv_step(dk, dv, k, v, Q, DO, LSE, DELTA, m_full, N, s_qn, s_dn, qk_scale, offs_m, offs_d,
                            HEAD_DIM, BLOCK_D, True, BASE2, PRECISION, ACC)
    dk = dk * sm_scale
    _store_rows(_rows_ptr(DK, b, h, s_dkb, s_dkh, s_dkn, offs_n, offs_d), dk.to(DK.dtype.element_ty),
                offs_n, N, offs_d, HEAD_DIM, BLOCK_D)
    _store_rows(_rows_ptr(DV, b, h, s_dvb, s_dvh, s_dvn, offs_n, offs_d), dv.to(DV.dtype.element_ty),
                offs_n, N, offs_d, HEAD_DIM, BLOCK_D)


@triton.jit
def _dq_step(dq, q, do, lse, delta, K, V, start_n, N, s_kn, s_vn, qk_scale, offs_n, offs_d,
             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, MASK_N: tl.constexpr, BASE2: tl.constexpr,
             PRECISION: tl.constexpr, ACC: tl.constexpr):
    rows = start_n + offs_n
    k = _load_rows(K + rows[:, None] * s_kn + offs_d[None, :], rows, N, offs_d, HEAD_DIM, BLOCK_D, MASK_N)
    v = _load_rows(V + rows[:, None] * s_vn + offs_d[None, :], rows, N, offs_d, HEAD_DIM, BLOCK_D, MASK_N)
    p = _exp(tl.dot(q, tl.trans(k), input_precision=PRECISION, out_dtype=ACC) * qk_scale - lse[:, None], BASE2)
    if MASK_N:
        p = tl.where(rows[None, :] < N, p, 0.0)
    dp = tl.dot(do, tl.trans(v), input_precision=PRECISION, out_dtype=ACC)
    ds = p * (dp - delta[:, None])
    dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=PRECISION, out_dtype=ACC)
    return dq


@triton.jit
def _attn_bwd_dq(Q, K, V, DO, LSE, DELTA, DQ, qk_scale, sm_scale,
                 s_qb, s_qh, s_qn, s_kb, s_kh, s_kn, s_vb, s_vh, s_vn, s_db, s_dh, s_dn, s_dqb, s_dqh, s_dqn,
                 H, N,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BASE2: tl.constexpr, PRECISION: tl.constexpr,
                 ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # One program per (batch·head, block of BLOCK_M queries); it loops over all keys in blocks of BLOCK_N.
    # A deliberate mirror of _attn_bwd_dkdv (see there).
    bh, b, h, offs_m = _program_block(N, H, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = _load_head_rows(Q, b, h, s_qb, s_qh, s_qn, offs_m, N, offs_d, HEAD_DIM, BLOCK_D)
    do = _load_head_rows(DO, b, h, s_db, s_dh, s_dn, offs_m, N, offs_d, HEAD_DIM, BLOCK_D)
    lse = _load_vec(LSE + bh.to(tl.int64) * N, offs_m, N, True)
    if BASE2:
        lse = lse * 1.4426950408889634
    delta = _load_vec(DELTA + bh.to(tl.int64) * N, offs_m, N, True)
    K += b * s_kb + h * s_kh
    V += b * s_vb + h * s_vh

    dq = tl.zeros([BLOCK_M, BLOCK_D], ACC)
    n_full = (N // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full, BLOCK_N):
        dq = _dq_step(dq, q, do, lse, delta, K, V, start_n, N, s_kn, s_vn, qk_scale, offs_n, offs_d,
                      HEAD_DIM, BLOCK_D, False, BASE2, PRECISION, ACC)
    if n_full < N:
        dq = _dq_step(dq, q, do, lse, delta, K, V, n_full, N, s_kn, s_vn, qk_scale, offs_n, offs_d,
                      HEAD_DIM, BLOCK_D, True, BASE2, PRECISION, ACC)
    dq = dq * sm_scale
    _store_rows(_rows_ptr(DQ, b, h, s_dqb, s_dqh, s_dqn, offs_m, offs_d), dq.to(DQ.dtype.element_ty),
                offs_m, N, offs_d, HEAD_DIM, BLOCK_D)


# --------------------------------------------------------------------------------------------------- configs


def _configs(pairs) -> list:
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in pairs]


# The tuning space, pruned to what sm_90 (H100/H200) needs at ViT shapes, by this rule:
# - Shapes: N ≤ 257 and d ≤ 128 with B·H in the hundreds to thousands, so the grid fills the GPU's 132 SMs at any
#   block size; a config only trades tile reuse against the waste of the masked tail block.
# - The owned axis (queries in the forward and dQ, keys in dK/dV) is 64 or 128 rows; 128 rows get 8 warps (two
#   warpgroups of the 64-row wgmma), 64 rows get 4. The streamed axis is 32 or 64.
# - num_stages = 2: the streamed loop makes at most 5 trips at N ≤ 257, so a deeper pipeline only costs shared
#   memory and compile time.
# - float16/bfloat16 (tensor cores): three configs per kernel, the largest tile 128×64 (fits shared memory at
#   d = 128). float32 with input_precision "ieee" runs on the FMA units, where a tile's registers, not shared
#   memory, are the limit and compile time grows with the tile's area: two configs per kernel, tiles ≤ 64×64.
# That is 9 compiled configs per 16-bit dtype and 6 for float32 per (N, d) key, instead of 22.
# dK/dV: BLOCK_N keys owned, BLOCK_M queries streamed. dQ and forward: BLOCK_M queries owned, BLOCK_N streamed.
TUNING_SPACE = {
    "16-bit": dict(fwd=_configs([(64, 64, 4, 2), (128, 64, 8, 2), (64, 32, 4, 2)]),
                   dkdv=_configs([(32, 64, 4, 2), (64, 64, 4, 2), (64, 128, 8, 2)]),
                   dq=_configs([(64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2)])),
    "float32": dict(fwd=_configs([(64, 32, 4, 2), (64, 64, 4, 2)]),
                    dkdv=_configs([(32, 64, 4, 2), (64, 64, 4, 2)]),
                    dq=_configs([(64, 32, 4, 2), (64, 64, 4, 2)])),
}
_KEY = ["N", "HEAD_DIM", "BASE2", "PRECISION"]
# Decided once, at import, as Triton decides it when it defines the kernels above.
_INTERPRETER = isinstance(_attn_fwd, InterpretedFunction)
_KERNELS = dict(fwd=_attn_fwd, dkdv=_attn_bwd_dkdv, dq=_attn_bwd_dq)
# One autotuner per (kernel, dtype class): each tunes only its own space, and torch.compile sees plain autotuners.
_TUNED = {(name, space): triton.autotune(configs[name], key=_KEY)(kernel)
          for space, configs in TUNING_SPACE.items() for name, kernel in _KERNELS.items()}


def tuning_space(dtype: torch.dtype) -> str:
    """The name of the config space the autotuner searches for inputs of ``dtype``."""
    return "16-bit" if dtype in (torch.float16, torch.bfloat16) else "float32"


def _parse_config(text: str) -> dict:
    allowed = {"BLOCK_M", "BLOCK_N", "num_warps", "num_stages"}
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in allowed or not value.strip().isdigit():
            raise ValueError(f"{CONFIG_ENV}={text!r}: expected comma-separated NAME=INT with NAME in "
                             f"{sorted(allowed)}, got {item!r}")
        out[name] = int(value)
    return _check_config(out, CONFIG_ENV)


def _check_config(cfg: dict, where: str) -> dict:
    full = dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    full.update(cfg)
    for name in ("BLOCK_M", "BLOCK_N"):
        size = full[name]
        if size < 16 or size & (size - 1):
            raise ValueError(f"{where}: {name} must be a power of two ≥ 16, got {size}")
    if full["num_warps"] < 1 or full["num_warps"] & (full["num_warps"] - 1):
        raise ValueError(f"{where}: num_warps must be a power of two, got {full['num_warps']}")
    if full["num_stages"] < 1:
        raise ValueError(f"{where}: num_stages must be ≥ 1, got {full['num_stages']}")
    return full


@contextlib.contextmanager
def pinned_config(block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 2,
                  kernel: Optional[str] = None) -> Iterator[None]:
    """Run every kernel with this one config instead of autotuning (for tests, debugging and reproducible timing).

    block_m is the query block and block_n the key block in all three kernels. Takes precedence over the
    IMPULSE_ATTN_TRITON_CONFIG environment variable. ``kernel`` ("fwd", "dkdv" or "dq") pins that kernel only;
    the others autotune as they would without a pin (so each config of one kernel's space can be run on the keys
    its autotuner compiled). The pin before is restored on the way out, whatever happens inside.

    On CUDA a pinned config gets no out-of-resources pruning (the autotuner's): before its first launch for a
    (kernel, dtype, head dim) its compiled shared memory is checked against the device's opt-in limit per block,
    and a config that does not fit is refused with a RuntimeError that says so (``_check_shared_memory``).
    """
    global _pinned, _pinned_kernel
    if kernel is not None and kernel not in _KERNELS:
        raise ValueError(f"pinned_config: kernel must be one of {sorted(_KERNELS)} or None, got {kernel!r}")
    cfg = _check_config(dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages),
                        "pinned_config")
    previous = _pinned, _pinned_kernel
    _pinned, _pinned_kernel = cfg, kernel
    try:
        yield
    finally:
        _pinned, _pinned_kernel = previous


@contextlib.contextmanager
def autotuning() -> Iterator[None]:
    """Let the autotuner choose inside the block, even where a config is pinned around it (by ``pinned_config`` or
    the environment); the interpreter keeps its own config. The pin in force before is restored on the way out,
    whatever happens inside."""
    global _pinned, _pinned_kernel
    previous = _pinned, _pinned_kernel
    _pinned, _pinned_kernel = _AUTOTUNE, None
    try:
        yield
    finally:
        _pinned, _pinned_kernel = previous


def active_config() -> Optional[dict]:
    """The pinned config in force (context manager, then environment, then the interpreter's), or None: autotune."""
    if _pinned is _AUTOTUNE:
        return dict(_INTERPRETER_CONFIG) if _INTERPRETER else None
    if _pinned is not None:
        return dict(_pinned)
    text = os.environ.get(CONFIG_ENV, "").strip()
    if text:
        return _parse_config(text)
    if _INTERPRETER:
        return dict(_INTERPRETER_CONFIG)
    return None


def _kernel_config(name: str) -> Optional[dict]:
    """The config kernel ``name`` ("fwd", "dkdv", "dq", "delta") runs with, or None: its autotuner."""
    cfg = active_config()
    if cfg is None or _pinned_kernel is None or _pinned_kernel == name or _pinned is _AUTOTUNE:
        return cfg
    return dict(_INTERPRETER_CONFIG) if _INTERPRETER else None   # another kernel is pinned, not this one


# --------------------------------------------------------------------------------------------------- shared memory

_fits: dict = {}   # (kernel, device, dtype, constexprs, config) already checked against the device's limit


def _can_check(t: torch.Tensor) -> bool:
    # Compiled kernels on real CUDA tensors only: no check under the interpreter, on fake or meta tensors (tracing,
    # compile planning), or while torch.compile traces (the compiled graph launches the kernels itself).
    return not _INTERPRETER and t.is_cuda and not is_fake(t) and not torch.compiler.is_compiling()


def _compiled_shared_memory(kernel, grid, args: tuple, kwargs: dict) -> Optional[int]:
    """Bytes of shared memory the kernel compiled for these arguments uses (compiling it, as its launch would:
    the launch then finds it in Triton's cache), or None where Triton does not say."""
    compiled = kernel.warmup(*args, grid=grid, **kwargs)
    return getattr(getattr(compiled, "metadata", None), "shared", None)


def _shared_memory_limit(device: torch.device) -> int:
    """The device's opt-in shared memory per block (what a kernel may use), as Triton reads it."""
    from triton.runtime import driver
    index = device.index if device.index is not None else torch.cuda.current_device()
    return int(driver.active.utils.get_device_properties(index)["max_shared_mem"])


def _check_shared_memory(name: str, kernel, grid, args: tuple, meta: dict, cfg: dict) -> None:
    """Refuse a pinned config whose compiled kernel needs more shared memory than the device allows, with a message
    that names it, instead of Triton's out-of-resources error at launch (the autotuner would have skipped it)."""
    q = args[0]
    if not _can_check(q):
        return
    key = (name, str(q.device), q.dtype, repr(sorted(meta.items())), repr(sorted(cfg.items())))
    if key in _fits:
        return
    need = _compiled_shared_memory(kernel, grid, args, {**meta, **cfg})
    limit = _shared_memory_limit(q.device)
    if need is not None and need > limit:
        raise RuntimeError(
            f"the pinned Triton config {cfg} needs {need} bytes of shared memory in the {name} kernel "
            f"({q.dtype}, head dim {meta['HEAD_DIM']}), more than the {limit} bytes per block this GPU allows: pin "
            f"smaller tiles (BLOCK_M, BLOCK_N) or fewer num_stages, or let the autotuner choose (it skips configs "
            f"that do not fit)")
    _fits[key] = need


def _skip_launch(t: torch.Tensor) -> bool:
    # Under the interpreter the ops are opaque custom ops (see _define_op) whose fake implementation is the same
    # function: numpy cannot read a fake tensor, and shapes are all a fake run needs.
    return _INTERPRETER and is_fake(t)


def _launch(name: str, grid, args: tuple, meta: dict) -> None:
    if _skip_launch(args[0]):
        return
    cfg = _kernel_config(name)
    if cfg is None:
        wrap_triton(_TUNED[name, tuning_space(args[0].dtype)])[grid](*args, **meta)
    else:
        _check_shared_memory(name, _KERNELS[name], grid, args, meta, cfg)
        wrap_triton(_KERNELS[name])[grid](*args, **meta, **cfg)


# --------------------------------------------------------------------------------------------------- checks


def _check_inputs(q, k, v, scale) -> Optional[str]:
    """Why these arguments are malformed, naming the argument, or None."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            return f"{name} must be a torch.Tensor, got {type(t).__name__}"
        if t.dim() != 4:
            return f"{name} must have shape (batch, heads, N, head_dim), got {tuple(t.shape)}"
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape:
            return f"{name} must have the shape of q {tuple(q.shape)}, got {tuple(t.shape)}"
        if t.dtype != q.dtype:
            return f"{name} must have the dtype of q ({q.dtype}), got {t.dtype}"
        if t.device != q.device:
            return f"{name} must be on the device of q ({q.device}), got {t.device}"
    if q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        return f"q, k, v dtype {q.dtype} is not supported (float16, bfloat16, float32; float64 in the interpreter)"
    if not 1 <= q.shape[-1] <= MAX_HEAD_DIM:
        return f"q, k, v head_dim (last dimension) must be between 1 and {MAX_HEAD_DIM}, got {q.shape[-1]}"
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            return f"scale must be a finite real number, got {scale!r}"
    return None


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


def unavailable_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Optional[str]:
    """None if the Triton kernel can run on these tensors now, otherwise why not (one human-readable line)."""
    bad = _check_inputs(q, k, v, None)
    if bad is not None:
        return bad
    if _INTERPRETER:
        if q.dtype not in _INTERPRETER_DTYPES:
            return f"the Triton interpreter (TRITON_INTERPRET=1) does not support {q.dtype}"
        return None
    if q.device.type != "cuda":
        return (f"tensors are on {q.device.type}: the Triton kernel needs CUDA tensors "
                f"(or TRITON_INTERPRET=1 on the CPU, for testing)")
    if q.dtype not in _CUDA_DTYPES:
        return f"{q.dtype} is not supported on CUDA (float16, bfloat16, float32)"
    if torch.version.hip is None:
        major, minor = _capability(q.device.index if q.device.index is not None else torch.cuda.current_device())
        if (major, minor) < (7, 0):
            return f"GPU compute capability {major}.{minor} is below Triton's minimum 7.0"
        if q.dtype == torch.bfloat16 and major < 8:
            return f"bfloat16 needs compute capability ≥ 8.0, the GPU has {major}.{minor}"
    return None


# --------------------------------------------------------------------------------------------------- the op


def _new(shape, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if _poison_outputs:
        return torch.full(shape, float("nan"), dtype=dtype, device=like.device)
    return torch.empty(shape, dtype=dtype, device=like.device)


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _static_args(q: torch.Tensor, scale: float) -> tuple[float, dict, torch.dtype]:
    """(scale as the kernels use it, compile-time arguments, accumulator dtype)."""
    d = q.shape[-1]
    fp64 = q.dtype == torch.float64
    base2 = not fp64
    if q.dtype == torch.float32 and q.is_cuda and not _INTERPRETER and torch.backends.cuda.matmul.allow_tf32:
        precision = "tf32"  # the user opted into TF32 matmuls globally; honour it here too
    elif q.dtype in (torch.float32, torch.float64):
        precision = "ieee"
    else:
        precision = "tf32"  # Triton's default; ignored for 16-bit inputs
    meta = dict(HEAD_DIM=d, BLOCK_D=max(16, triton.next_power_of_2(d)), BASE2=base2, PRECISION=precision,
                ACC=tl.float64 if fp64 else tl.float32)
    return (scale * _LOG2E if base2 else scale), meta, (torch.float64 if fp64 else torch.float32)


def _strides(t: torch.Tensor) -> tuple:
    return t.stride(0), t.stride(1), t.stride(2)


def _define_op(name: str):
    """triton_op on GPUs, so torch.compile sees and can optimize the kernels inside. Under the interpreter an opaque
    custom_op instead: torch traces only compiled kernels, and a traced graph would silently drop interpreted ones."""
    def define(fn):
        if not _INTERPRETER:
            return triton_op(name, mutates_args=())(fn)
        op = torch.library.custom_op(name, mutates_args=())(fn)
        op.register_fake(fn)
        return op
    return define


@_define_op("impulse_attn::flash_attention_fwd")
def _flash_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, LSE): O (B, H, N, d) like q, LSE (B, H, N) float32 (float64 for float64) = log Σ_j exp(scale·q·k_j)."""
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    bsz, heads, n, d = q.shape
    qk_scale, meta, acc = _static_args(q, scale)
    o = _new((bsz, heads, n, d), q, q.dtype)
    lse = _new((bsz, heads, n), q, acc)
    if o.numel() == 0:
        return o, lse

    def grid(m):
        return (triton.cdiv(n, m["BLOCK_M"]) * bsz * heads,)

    _launch("fwd", grid,
            (q, k, v, o, lse, qk_scale, *_strides(q), *_strides(k), *_strides(v), *_strides(o), heads, n), meta)
    return o, lse


@_define_op("impulse_attn::flash_attention_bwd")
def _flash_bwd(grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               lse: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dQ, dK, dV) for O = softmax(scale·Q Kᵀ) V, given dO and the forward's O and LSE."""
    q, k, v = _unit_last_stride(q), _unit_last_stride(k), _unit_last_stride(v)
    grad_out, out, lse = _unit_last_stride(grad_out), _unit_last_stride(out), lse.contiguous()
    bsz, heads, n, d = q.shape
    qk_scale, meta, acc = _static_args(q, scale)
    dq = _new(q.shape, q, q.dtype)
    dk = _new(k.shape, q, q.dtype)
    dv = _new(v.shape, q, q.dtype)
    if dq.numel() == 0:
        return dq, dk, dv
    delta = _new((bsz, heads, n), q, acc)
    cfg = _kernel_config("delta") or dict(BLOCK_M=64, num_warps=4)
    if not _skip_launch(q):
        wrap_triton(_attn_bwd_delta)[(triton.cdiv(n, cfg["BLOCK_M"]) * bsz * heads,)](
            out, grad_out, delta, *_strides(out), *_strides(grad_out), heads, n,
            HEAD_DIM=meta["HEAD_DIM"], BLOCK_D=meta["BLOCK_D"], ACC=meta["ACC"], BLOCK_M=cfg["BLOCK_M"],
            num_warps=cfg["num_warps"])

    def grid_keys(m):
        return (triton.cdiv(n, m["BLOCK_N"]) * bsz * heads,)

    def grid_queries(m):
        return (triton.cdiv(n, m["BLOCK_M"]) * bsz * heads,)

    common = (*_strides(q), *_strides(k), *_strides(v), *_strides(grad_out))
    _launch("dkdv", grid_keys,
            (q, k, v, grad_out, lse, delta, dk, dv, qk_scale, scale, *common, *_strides(dk), *_strides(dv),
             heads, n), meta)
    _launch("dq", grid_queries,
            (q, k, v, grad_out, lse, delta, dq, qk_scale, scale, *common, *_strides(dq), heads, n), meta)
    return dq, dk, dv


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _flash_bwd(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_flash_fwd.register_autograd(_backward, setup_context=_setup_context)


# --------------------------------------------------------------------------------------------------- public


def _check_or_raise(q, k, v, scale) -> None:
    bad = _check_inputs(q, k, v, scale)
    if bad is not None:
        raise ValueError(bad)
    if torch.compiler.is_compiling():  # not traced: under torch.compile an unusable device fails at launch
        return
    why = unavailable_reason(q, k, v)
    if why is not None:
        raise RuntimeError(f"the Triton attention kernel cannot run: {why}")


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """softmax(scale · q kᵀ) v, non-causal, fused in Triton, differentiable in q, k and v.

    q, k, v: (B, H, N, d), one dtype (float16, bfloat16 or float32 on CUDA; float16, float32 or float64 under
    TRITON_INTERPRET=1) and one device, 1 ≤ d ≤ 128, any N ≥ 0. scale: any finite number. Returns (B, H, N, d) in
    the input dtype; the softmax and both products accumulate in float32 (float64 for float64 inputs).
    Raises ValueError for malformed arguments and RuntimeError when the kernel cannot run here
    (see ``unavailable_reason``).
    """
    _check_or_raise(q, k, v, scale)
    out, _ = torch.ops.impulse_attn.flash_attention_fwd(q, k, v, float(scale))
    return out


def flash_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``flash_attention`` that also returns the per-row log-sum-exp (B, H, N) (float32; not differentiable)."""
    _check_or_raise(q, k, v, scale)
    return torch.ops.impulse_attn.flash_attention_fwd(q, k, v, float(scale))
