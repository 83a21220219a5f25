"""Build impulse_attn and its compiled fit extension, impulse_attn._C (csrc/).

The extension is built with the CUDA kernels when a CUDA toolkit is found (CUDA_HOME, /usr/local/cuda or nvcc on
PATH) and torch is a CUDA build, CPU-only otherwise. Environment switches:

    IMPULSE_ATTN_NO_EXT=1      pure-Python install (the package falls back to its PyTorch reference paths)
    IMPULSE_ATTN_NO_CUDA=1     build the CPU kernels only, even where nvcc exists
    IMPULSE_ATTN_FORCE_CUDA=1  build the CUDA kernels even when no toolkit is detected (fails loudly if unusable)
    TORCH_CUDA_ARCH_LIST       GPU architectures; defaults to "8.0;9.0" when unset and no GPU is visible
    MAX_JOBS                   parallel compile jobs (ninja)

Install with ``pip install --no-build-isolation -e .`` after torch, so that the extension builds against the torch
that is installed. pyproject.toml's [build-system] (setuptools only, torch deliberately not listed) keeps pip on the
PEP 517/660 path: without it, a pip older than 25.3 with ``wheel`` installed runs the legacy ``setup.py develop``,
which setuptools >= 80 turns into a pip run with build isolation that downloads setuptools (and fails offline).
"""
import os
import shutil
import sys

from setuptools import find_packages, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """The toolkit root: CUDA_HOME/CUDA_PATH, /usr/local/cuda, or the parent of nvcc's bin/ when it has lib64."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    if os.path.exists("/usr/local/cuda/bin/nvcc"):
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    if nvcc:
        root = os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))
        if os.path.isdir(os.path.join(root, "lib64")):
            return root
    return None


def _extensions():
    if _flag("IMPULSE_ATTN_NO_EXT"):
        print("impulse_attn: IMPULSE_ATTN_NO_EXT set, building without the compiled extension", file=sys.stderr)
        return [], {}
    want_cuda = not _flag("IMPULSE_ATTN_NO_CUDA")
    cuda_home = _find_cuda_home() if want_cuda else None
    if cuda_home and not os.environ.get("CUDA_HOME"):
        # torch.utils.cpp_extension reads CUDA_HOME at import; a wrapper nvcc on PATH would make it guess
        # /usr/local and the link would miss libcudart.
        os.environ["CUDA_HOME"] = cuda_home
    try:
        import torch
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as e:
        print(f"impulse_attn: torch is not importable ({e}); building without the compiled extension. Install "
              f"torch first and use `pip install --no-build-isolation -e .`", file=sys.stderr)
        return [], {}

    use_cuda = want_cuda and (_flag("IMPULSE_ATTN_FORCE_CUDA") or (cuda_home is not None and
                                                                   torch.version.cuda is not None))
    here = os.path.dirname(os.path.abspath(__file__))
    # fit_plan.cpp (the CUDA launch planner) is plain C++: it is in every build, so the planner can be tested (and
    # queried through impulse_attn._C.plan_launch) without a GPU.
    sources = [os.path.join("csrc", name) for name in ("ops.cpp", "fit_cpu.cpp", "fit_plan.cpp")]
    # -fopenmp: at::parallel_for is inline OpenMP code; the other flags let the compiler vectorize the softmax
    # exp and the reductions (no errno, no FP traps, FMA contraction). Values are unchanged beyond rounding.
    cxx = ["-O3", "-fopenmp", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math"]
    kwargs = dict(name="impulse_attn._C", sources=sources, include_dirs=[os.path.join(here, "csrc")],
                  extra_link_args=["-fopenmp"])
    if use_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        kwargs["sources"] = sources + [os.path.join("csrc", "fit_cuda.cu")]
        kwargs["define_macros"] = [("WITH_CUDA", None)]
        kwargs["extra_compile_args"] = {"cxx": cxx, "nvcc": ["-O3"]}
        ext = CUDAExtension(**kwargs)
        print(f"impulse_attn: building impulse_attn._C with CUDA (CUDA_HOME={os.environ.get('CUDA_HOME')}, "
              f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})", file=sys.stderr)
    else:
        kwargs["extra_compile_args"] = {"cxx": cxx}
        ext = CppExtension(**kwargs)
        print("impulse_attn: building impulse_attn._C for the CPU only", file=sys.stderr)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

setup(
    name="impulse_attn",
    version="0.1.0",
    description="Impulse (convolutional) initialization of attention for data-efficient vision transformers",
    packages=find_packages(include=["impulse_attn", "impulse_attn.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision", "numpy", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "pytest-benchmark", "hypothesis", "timm>=1.0", "transformers>=4.40"],
                    "timm": ["timm>=1.0"], "hf": ["transformers>=4.40"]},
    entry_points={"console_scripts": ["impulse-attn=impulse_attn.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
