# Two commands for a fresh machine: `make demo` (set up, then run the main job) and `make test`.
# Both create .venv on first use and are no-ops to set up again afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.impulse_attn-installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEV_DEPS := numpy scipy tqdm matplotlib pytest pytest-benchmark hypothesis ninja pybind11 "timm>=1.0" "transformers>=4.40"

# The CUDA toolkit, when present, is compiled against (torch's build looks in /usr/local otherwise).
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif
export MAX_JOBS ?= 2

.PHONY: setup demo test test-cpu-variants bench clean

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml Makefile $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q $(DEV_DEPS)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

demo: setup
	$(VENV)/bin/impulse-attn demo

test: setup
	$(PY) -m pytest tests/ -q

# The parity modules again under other CPU code paths (no vector ISA dispatch; one thread): their tolerances come from
# error models, so they must pass whatever kernels ATen, MKL or OpenMP pick (CI runs this after `make test`).
PARITY := tests/test_fit_ext.py tests/test_attention.py tests/test_triton_attention.py tests/test_fitting.py \
          tests/test_triton_training_parity.py tests/test_cuda_emulated.py
# The golden test (the paper's own code's output) under each switch that changes its bits: ATen's kernel set (the
# noise draws), MKL's reproducibility branch and OpenBLAS's kernels (docs/timm.md, "What bit for bit means"); the
# promise checks hold under all of them, the bit checks where the switch still matches the file's maker.
GOLDEN := tests/test_golden.py
test-cpu-variants: setup
	ATEN_CPU_CAPABILITY=default $(PY) -m pytest $(PARITY) $(GOLDEN) -q
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PARITY) -q
	ATEN_CPU_CAPABILITY=avx2 $(PY) -m pytest $(GOLDEN) -q
	OPENBLAS_CORETYPE=Haswell $(PY) -m pytest $(GOLDEN) -q
	MKL_CBWR=COMPATIBLE $(PY) -m pytest $(GOLDEN) -q

bench: setup
	$(PY) -m pytest benchmarks/ --benchmark-only -s

clean:
	rm -rf build *.egg-info impulse_attn/*.so .pytest_cache .benchmarks

# The GPU acceptance run (docs/gpu-check.md): the system Python ($(PYTHON)), no venv, no downloads, at most 6 minutes
# on one H100 or H200, build included. Writes report.md, figures.json and gpu-check.log to GPU_CHECK_OUT (default:
# $OUT when set, else runs/gpu-check), rewritten after every stage. DRY_RUN=1: the same stages on the CPU, the GPU untouched.
# The CUDA build uses every core unless MAX_JOBS is given.
GPU_CHECK_JOBS ?= $(if $(filter file,$(origin MAX_JOBS)),$(shell nproc 2>/dev/null || echo 4),$(MAX_JOBS))
DRY_RUN ?=

.PHONY: gpu-check
gpu-check:
	MAX_JOBS=$(GPU_CHECK_JOBS) $(PYTHON) -m benchmarks.gpu_check $(if $(filter 1 yes true on,$(DRY_RUN)),--dry-run)
