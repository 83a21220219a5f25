"""The compiles each GPU stage asks for, counted from its tests' parametrization, and the time they cost.

On a fresh GPU machine a stage's time goes mostly to compiling: every Triton kernel the tests launch is compiled
once per distinct key (kernel, constexprs, options, and the specialization of each integer and pointer argument:
equal to 1, divisible by 16, 16-byte aligned), and every torch.compile of a model is a cold inductor compile. So
each stage's budget is checked against its compiles times a stated cost per compile (``COSTS``).

How they are counted:

- Every test module a GPU stage runs declares, per test, what it launches as a function of the test's parameters:
  ``LAUNCHES = {"test_name": lambda **params: [Call(...), Inductor(...), ...]}``, or ``LAUNCHES = NO_LAUNCHES``
  for a module without Triton kernels or torch.compile. A test its module does not declare is an error.
- A stage's tests are the ones pytest collects for its selection (the recorder of pytest_stage.py calls
  ``plan_items`` when collection finishes), so parametrization and ``-k`` are the stage's own.
- Each ``Call`` goes through the kernel wrapper itself (``triton_flash._flash_fwd`` and ``_flash_bwd``) on meta
  tensors of the call's shapes and strides, with the launches intercepted (``intercept``); each launch becomes
  Triton's own cache key, from Triton's binder for an sm_90 target (``compile_key``).
- An autotuned launch compiles every config of its space the first time its tuning key is met in a process (each
  stage is a process), and later only the config it chose, where the specialization is new.
- Keys compiled by an earlier stage of the run are in Triton's on-disk cache and cost nothing.

On the GPU, tests/gpu/launch_guard.py records the launches each test really makes, with the same key function, and
fails a test that launches something its declaration does not hold: the declarations cannot drift from the tests.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Tuple

# Stated estimates for one H100/H200 (no GPU has measured them yet; the GPU report shows the real stage times next
# to the plan, so they can be corrected from it):
COSTS = dict(
    triton=2.0,      # s per cold Triton compile of one kernel key (flash forward/backward at d ≤ 128: 1-2 s)
    inductor=15.0,   # s per cold torch.compile (inductor) of a small model's forward and backward, its kernels included
    autotune=0.3,    # s per config the autotuner benchmarks (do_bench: 25 ms warm-up, 100 ms of runs, and launches)
    start=10.0,      # s for a pytest stage's child to start: Python, torch, the CUDA context, collection
)
PIN = (64, 64, 4, 2)   # (BLOCK_M, BLOCK_N, num_warps, num_stages): the config most parity tests pin
# float32's "ieee" dots run on the FMA units, which stage whole operand tiles in shared memory: at d > 64 the dK/dV
# kernel with 64×64 tiles and two stages may need ~200 KB, past an A100's 163 KB opt-in limit and close to an
# H100's 227 KB. 32×32 tiles need about a quarter of that (and the kernel checks before its first launch).
FP32_WIDE_PIN = (32, 32, 4, 2)


def pin_for(dtype, head_dim: int) -> Tuple[int, int, int, int]:
    """The config the GPU tests pin for this dtype and head dim: one whose shared memory fits."""
    import torch
    return FP32_WIDE_PIN if dtype == torch.float32 and head_dim > 64 else PIN


NO_LAUNCHES = "no Triton kernel and no torch.compile"
# The GPU the keys are computed for (sm_90: H100/H200). The arch is part of each key, but not of how many there
# are: another GPU compiles as many. tests/gpu/launch_guard.py computes real and declared launches for it alike.
TARGET = ("cuda", 90, 32)


@dataclass(frozen=True)
class Call:
    """One ``flash_attention`` forward (and backward) on (b, h, n, d) inputs of ``dtype``.

    config: the pinned (BLOCK_M, BLOCK_N, num_warps, num_stages), or None for the autotuner; kernel: the one kernel
    ("fwd", "dkdv", "dq") the config pins, the others autotuning (None: all kernels). layout: how q, k, v lie
    in memory ("contiguous"; "qkv": views of one (b, n, 3, h, d) projection; "qk": SimpleViT's q and k as the halves
    of one (b, n, 2·h·d) projection, v its own (b, n, h·d) one). grad: the upstream gradient ("contiguous";
    "batch-broadcast": stride 0 over the batch; "merged": the gradient of SimpleViT's head merge). scale and seed
    change no compile key; the tests that run their calls use them."""
    b: int
    h: int
    n: int
    d: int
    dtype: object
    config: Optional[Tuple[int, int, int, int]] = PIN
    kernel: Optional[str] = None
    backward: bool = True
    layout: str = "contiguous"
    grad: str = "contiguous"
    scale: float = field(default=0.125, compare=False)
    seed: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Inductor:
    """One cold torch.compile (inductor) of a forward and backward: ``what`` it compiles."""
    what: str


class Undeclared(LookupError):
    """A test whose module does not say what it launches."""


def declared(module, name: str, params: dict) -> list:
    """What test ``name`` of ``module`` launches with these parameters (its module's LAUNCHES)."""
    table = getattr(module, "LAUNCHES", None)
    where = getattr(module, "__file__", getattr(module, "__name__", "?"))
    if table is None:
        raise Undeclared(f"{where} declares no LAUNCHES: every module a GPU stage runs says what each test launches "
                         f"(benchmarks/gpu_check/compiles.py), or LAUNCHES = NO_LAUNCHES")
    if table == NO_LAUNCHES:
        return []
    if name not in table:
        raise Undeclared(f"{where}: test {name} is not in LAUNCHES (declare what it launches; [] for nothing)")
    return list(table[name](**params))


# --------------------------------------------------------------------------------------------------- keys


def _backend():
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    return CUDABackend(GPUTarget(*TARGET))


_BINDERS: dict = {}


def _binder(fn):
    """Triton's own argument binder for a kernel (JITFunction on a GPU, InterpretedFunction under the interpreter):
    it returns the specialization that Triton's compile cache is keyed by."""
    from triton.runtime.jit import JITFunction, create_function_from_signature
    py = fn.fn
    if py not in _BINDERS:
        jit = fn if isinstance(fn, JITFunction) else JITFunction(py)
        backend = _backend()
        _BINDERS[py] = (backend, create_function_from_signature(jit.signature, jit.params, backend))
    return _BINDERS[py]


def compile_key(fn, args: tuple, kwargs: dict) -> str:
    """The key Triton compiles ``fn[grid](*args, **kwargs)`` under: kernel, constexprs, options (normalized as the
    backend parses them, as its on-disk cache does) and the specialization of every other argument."""
    backend, binder = _binder(fn)
    # JITFunction.run adds these two before binding; their values are the defaults in every stage
    _, specialization, options = binder(*args, **dict(kwargs, debug=False, instrumentation_mode=""))
    parsed = backend.parse_options(dict(options))
    return f"{fn.fn.__name__} {specialization} {sorted(vars(parsed).items())}"


def _autotuner():
    from triton.runtime.autotuner import Autotuner
    return Autotuner


def tuning_key(tuner, args: tuple, kwargs: dict) -> tuple:
    """The autotuner's cache key for these arguments, as Autotuner.run forms it (key values, then arg dtypes)."""
    named = {**dict(zip(tuner.arg_names, args)), **kwargs}
    named = {k: v for k, v in named.items() if k in tuner.arg_names}
    return tuple([named[k] for k in tuner.keys if k in named] + [str(v.dtype) for v in named.values()
                                                                  if hasattr(v, "dtype")])


@contextlib.contextmanager
def intercept(run: bool = False, on_launch=None):
    """Record every kernel launch of triton_flash as (kernel or autotuner, args, kwargs) in the list it yields, or
    hand it to ``on_launch(fn, args, kwargs)`` instead (which keeps no tensor alive); launch it too if ``run``."""
    from impulse_attn.attention import triton_flash as ta
    real = ta.wrap_triton
    seen: list = []

    class Recording:
        def __init__(self, fn):
            self.fn = fn

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                if on_launch is None:
                    seen.append((self.fn, args, kwargs))
                else:
                    on_launch(self.fn, args, kwargs)
                return real(self.fn)[grid](*args, **kwargs) if run else None
            return launch

    ta.wrap_triton = Recording
    try:
        yield seen
    finally:
        ta.wrap_triton = real


def launch_signature(fn, args: tuple, kwargs: dict) -> str:
    """What one launch asks to compile: its compile key, or for an autotuned launch its tuning key and the compile
    keys of every config it may run (tests/gpu/launch_guard.py compares these with the declarations)."""
    if isinstance(fn, _autotuner()):
        keys = sorted(compile_key(fn.fn, args, {**kwargs, **c.all_kwargs()}) for c in fn.configs)
        return f"autotuned {tuning_key(fn, args, kwargs)} {keys}"
    return compile_key(fn, args, kwargs)


# --------------------------------------------------------------------------------------------------- calls


def _empty(*shape, dtype):
    import torch
    return torch.empty(shape, dtype=dtype, device="meta")


def call_tensors(call: Call) -> tuple:
    """(q, k, v, grad_out) on the meta device with the call's shapes and strides."""
    b, h, n, d, dt = call.b, call.h, call.n, call.d, call.dtype
    if call.layout == "contiguous":
        q, k, v = (_empty(b, h, n, d, dtype=dt) for _ in range(3))
    elif call.layout == "qkv":
        q, k, v = _empty(b, n, 3, h, d, dtype=dt).permute(2, 0, 3, 1, 4)
    elif call.layout == "qk":
        q, k = (t.reshape(b, n, h, d).transpose(1, 2) for t in _empty(b, n, 2 * h * d, dtype=dt).chunk(2, dim=-1))
        v = _empty(b, n, h * d, dtype=dt).reshape(b, n, h, d).transpose(1, 2)
    else:
        raise ValueError(f"unknown layout {call.layout!r}")
    if call.grad == "contiguous":
        go = _empty(b, h, n, d, dtype=dt)
    elif call.grad == "batch-broadcast":
        go = _empty(1, h, n, d, dtype=dt).expand(b, h, n, d)
    elif call.grad == "merged":
        go = _empty(b, n, h, d, dtype=dt).transpose(1, 2)
    else:
        raise ValueError(f"unknown grad {call.grad!r}")
    return q, k, v, go


@contextlib.contextmanager
def _as_on_a_gpu(ta):
    """triton_flash as it behaves on a GPU: no interpreter config, no poisoned outputs, no environment pin."""
    saved = ta._INTERPRETER, ta._poison_outputs, os.environ.pop(ta.CONFIG_ENV, None)
    ta._INTERPRETER, ta._poison_outputs = False, False
    try:
        yield
    finally:
        ta._INTERPRETER, ta._poison_outputs = saved[0], saved[1]
        if saved[2] is not None:
            os.environ[ta.CONFIG_ENV] = saved[2]


def call_launches(calls: Iterable[Call]) -> list:
    """Every kernel launch the calls make, in order, as (kernel or autotuner, args, kwargs): the wrapper's own
    launches on meta tensors, nothing run."""
    from impulse_attn.attention import triton_flash as ta
    fwd = getattr(ta._flash_fwd, "_init_fn", ta._flash_fwd)   # the Python function behind the op
    bwd = getattr(ta._flash_bwd, "_init_fn", ta._flash_bwd)
    out = []
    with _as_on_a_gpu(ta), intercept() as seen:
        for call in calls:
            q, k, v, go = call_tensors(call)
            with (ta.pinned_config(*call.config, kernel=call.kernel) if call.config is not None
                  else ta.autotuning()):
                o, lse = fwd(q, k, v, call.scale)
                if call.backward:
                    bwd(go, q, k, v, o, lse, call.scale)
            out.extend(seen)
            seen.clear()
    return out


# --------------------------------------------------------------------------------------------------- plans


class Process:
    """The compiles of one process (a stage's pytest child) on top of the on-disk cache earlier stages left."""

    def __init__(self, cached: Optional[set] = None):
        self.cached = set(cached or ())
        self.new: List[str] = []          # compile keys this process compiles
        self.reused: set = set()          # keys it launches that an earlier stage compiled
        self.tuned: set = set()           # tuning keys seen (per autotuner) in this process
        self.autotune_configs = 0         # configs benchmarked
        self.inductor: List[str] = []

    def _compile(self, key: str) -> None:
        if key in self.cached:
            if key not in self.new:
                self.reused.add(key)
            return
        self.cached.add(key)
        self.new.append(key)

    def launch(self, fn, args: tuple, kwargs: dict) -> None:
        if not isinstance(fn, _autotuner()):
            self._compile(compile_key(fn, args, kwargs))
            return
        keys = [compile_key(fn.fn, args, {**kwargs, **c.all_kwargs()}) for c in fn.configs]
        tk = (id(fn), tuning_key(fn, args, kwargs))
        if tk not in self.tuned:             # the autotuner runs (so compiles) every config
            self.tuned.add(tk)
            self.autotune_configs += len(keys)
            for key in keys:
                self._compile(key)
        elif not all(key in self.cached for key in keys):
            self._compile(f"the config chosen for {tk[1]} of {keys}")   # one of them, which is not known here

    def add(self, entries: Iterable) -> None:
        entries = list(entries)
        for fn, args, kwargs in call_launches([e for e in entries if isinstance(e, Call)]):
            self.launch(fn, args, kwargs)
        self.inductor += [e.what for e in entries if isinstance(e, Inductor)]

    def summary(self, budget: Optional[float] = None) -> dict:
        seconds = (COSTS["start"] + COSTS["triton"] * len(self.new) + COSTS["inductor"] * len(self.inductor)
                   + COSTS["autotune"] * self.autotune_configs)
        out = dict(triton=len(self.new), triton_cached=len(self.reused), inductor=len(self.inductor),
                   autotune_configs=self.autotune_configs, seconds=round(seconds, 1), costs=dict(COSTS))
        if budget is not None:
            out.update(budget=budget, fits=seconds <= budget)
        return out


def plan_items(items, cached: Optional[set] = None) -> tuple:
    """(Process, undeclared test errors) for pytest items, in collection order."""
    proc, errors = Process(cached), []
    for item in items:
        params = dict(getattr(getattr(item, "callspec", None), "params", {}))
        try:
            proc.add(declared(item.module, item.originalname, params))
        except Undeclared as e:
            errors.append(str(e))
    return proc, sorted(set(errors))
