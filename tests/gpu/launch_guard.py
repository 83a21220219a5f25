"""Checks that hold for every GPU test (tests/gpu): what it launches is what its module's LAUNCHES declares (the
compile counts of `make gpu-check` rest on those declarations, benchmarks/gpu_check/compiles.py), and it leaves
no Triton config pinned behind it (a pin that outlives its test silences the autotuner for the rest of the
process).

Each GPU module imports the autouse fixture below (``from launch_guard import
declared_launches_and_no_pin_left``): a conftest.py here would be imported as the module "conftest" too, and hide
tests/conftest.py's helpers from the test modules that import them by that name."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/gpu_check/compiles.py

from benchmarks.gpu_check import compiles  # noqa: E402


def _real(args: tuple) -> bool:
    """Launch arguments Triton's binder can key: real tensors (not fake, meta or functional ones traced by
    torch.library.opcheck or torch.compile) and plain integers (no symbolic sizes)."""
    from torch._subclasses.fake_tensor import is_fake
    for a in args:
        if isinstance(a, torch.Tensor) and (is_fake(a) or a.is_meta or torch._is_functional_tensor(a)):
            return False
        if isinstance(a, (torch.SymInt, torch.SymFloat)):
            return False
    return True


@pytest.fixture(autouse=True)
def declared_launches_and_no_pin_left(request):
    from impulse_attn.attention import triton_flash as ta
    pin_before = (ta._pinned, ta._pinned_kernel)
    check = torch.cuda.is_available() and not ta._INTERPRETER
    declared = None
    if check:
        params = dict(getattr(getattr(request.node, "callspec", None), "params", {}))
        declared = compiles.declared(request.module, request.node.originalname, params)
        # torch.compile traces the kernels' wrapper: a recording stand-in for wrap_triton must not be in that trace
        check = not any(isinstance(e, compiles.Inductor) for e in declared)
    if not check:
        yield
    else:
        launched = []

        def record(fn, args, kwargs):
            if _real(args):
                launched.append(compiles.launch_signature(fn, args, kwargs))

        with compiles.intercept(run=True, on_launch=record):
            yield
        allowed = {compiles.launch_signature(*launch) for launch in
                   compiles.call_launches([e for e in declared if isinstance(e, compiles.Call)])}
        extra = sorted(set(launched) - allowed)
        assert not extra, (f"{request.node.nodeid} launched {len(extra)} kernel key(s) its module's LAUNCHES does "
                           f"not declare (so `make gpu-check` does not count their compiles): {extra[:3]}")
    pin_after = (ta._pinned, ta._pinned_kernel)
    assert pin_after == pin_before, (f"{request.node.nodeid} left a Triton config pinned: {pin_after} (before it: "
                                     f"{pin_before}); pin with ta.pinned_config / ta.autotuning, which restore it")
