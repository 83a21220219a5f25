"""What decides the bits of a CPU computation here: the CPU, ATen's kernel set, MKL's code path (torch's linear
algebra) and OpenBLAS's kernels (numpy's), read without running the computation itself.

Used by tests/test_golden.py to say where bit-identity with a file made on another machine is claimed. Every field
is read from the running process (ctypes into the libraries torch and numpy loaded), so environment switches
(``ATEN_CPU_CAPABILITY``, ``MKL_CBWR``, ``OPENBLAS_CORETYPE``) show. A field that cannot be read is None, and
None never matches a recorded value.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import platform
from typing import Optional

import numpy as np
import torch

#: ``mkl_cbwr_get(MKL_CBWR_BRANCH)`` codes (mkl_service.h): which conditional-numerical-reproducibility branch
#: MKL runs. "off" is MKL's default (its fastest path for this CPU, not reproducible across CPUs).
MKL_CBWR_NAMES = {1: "off", 2: "auto", 3: "compatible", 4: "sse2", 6: "ssse3", 7: "sse4_1", 8: "sse4_2", 9: "avx",
                  10: "avx2", 11: "avx512_mic", 12: "avx512", 13: "avx512_mic_e1", 14: "avx512_e1"}

#: OpenBLAS cores whose kernels gave the same bits for the golden cases (checked by forcing each core with
#: ``OPENBLAS_CORETYPE`` on one machine): Zen runs Haswell's AVX2 kernels, Cooperlake and SapphireRapids
#: SkylakeX's AVX-512 ones. Any other core is its own family.
OPENBLAS_KERNEL_FAMILY = {"Haswell": "haswell", "Zen": "haswell", "SkylakeX": "skylakex", "Cooperlake": "skylakex",
                          "SapphireRapids": "skylakex"}


def _cpuinfo() -> dict:
    out = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if not line.strip():
                    break                      # the first processor is enough
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def _torch_cpu_lib() -> Optional[ctypes.CDLL]:
    path = os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so")
    try:
        return ctypes.CDLL(path)
    except OSError:
        return None


def _mkl() -> tuple:
    """(version string, CNR branch name) of the MKL inside torch, or (None, None)."""
    lib = _torch_cpu_lib()
    if lib is None:
        return None, None
    version = branch = None
    try:
        buf = ctypes.create_string_buffer(256)
        lib.MKL_Get_Version_String(buf, len(buf))
        version = buf.value.decode(errors="replace")
    except AttributeError:
        pass
    try:
        get = lib.mkl_serv_cbwr_get
        get.restype = ctypes.c_int
        code = get(ctypes.c_int(1))                # MKL_CBWR_BRANCH
        branch = MKL_CBWR_NAMES.get(code, f"code {code}")
    except AttributeError:
        pass
    return version, branch


def _openblas() -> tuple:
    """(configuration string, running core) of the OpenBLAS numpy loaded, or (None, None)."""
    roots = [os.path.dirname(np.__file__) + ".libs", os.path.join(os.path.dirname(np.__file__), ".libs")]
    for root in roots:
        for path in sorted(glob.glob(os.path.join(root, "*openblas*.so*"))):
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            found = {}
            for what in ("corename", "config"):
                for prefix in ("scipy_openblas_", "openblas_"):
                    for suffix in ("64_", ""):
                        fn = getattr(lib, f"{prefix}get_{what}{suffix}", None)
                        if fn is not None:
                            fn.restype = ctypes.c_char_p
                            found[what] = fn().decode(errors="replace")
                            break
                    if what in found:
                        break
            if "corename" in found:
                return found.get("config"), found["corename"]
    return None, None


def normal_stream() -> str:
    """A fingerprint of the numbers ``torch.nn.init.trunc_normal_`` draws from a seeded generator: ATen fills
    float32 tensors from a vectorized kernel (AVX2 or AVX-512 builds) or a scalar loop (``ATEN_CPU_CAPABILITY=
    default``, other architectures), which give different numbers from the same seed."""
    t = torch.empty(4096)
    torch.nn.init.trunc_normal_(t, std=0.6, a=-2.0, b=2.0, generator=torch.Generator().manual_seed(0))
    return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def record() -> dict:
    """Everything above, for this process."""
    info = _cpuinfo()
    mkl_version, mkl_cbwr = _mkl()
    openblas_config, openblas_core = _openblas()
    openblas_version = openblas_config.split()[1] if openblas_config and len(openblas_config.split()) > 1 else None
    return {
        "machine": platform.machine(),
        "cpu_vendor": info.get("vendor_id"),
        "cpu_model_name": info.get("model name"),
        "cpu_family": info.get("cpu family"),
        "cpu_model": info.get("model"),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_version": torch.__version__,
        "mkl_version": mkl_version,
        "mkl_cbwr": mkl_cbwr,
        "normal_stream": normal_stream(),
        "numpy_version": np.__version__,
        "openblas_version": openblas_version,
        "openblas_core": openblas_core,
        "openblas_kernels": OPENBLAS_KERNEL_FAMILY.get(openblas_core, openblas_core),
    }


def mismatches(want: dict, have: Optional[dict] = None) -> list:
    """The fields where ``have`` (default: this process) differs from ``want``. A value in ``want`` may be a set
    of accepted values; None in ``have`` never matches."""
    have = record() if have is None else have
    out = []
    for key, accepted in want.items():
        got = have.get(key)
        ok = got is not None and (got in accepted if isinstance(accepted, (set, frozenset)) else got == accepted)
        if not ok:
            out.append(f"{key} {got!r} (maker: {sorted(accepted) if isinstance(accepted, (set, frozenset)) else accepted!r})")
    return out
