# Two commands for a fresh machine: `make demo` (set up, then run the main job) and `make test`.
# Both create .venv on first use and are no-ops to set up again afterwards.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.impulse_attn-installed
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
DEV_DEPS := numpy tqdm matplotlib pytest pytest-benchmark hypothesis ninja pybind11 "timm>=1.0"

# The CUDA toolkit, when present, is compiled against (torch's build looks in /usr/local otherwise).
ifneq ($(wildcard /usr/local/cuda/bin/nvcc),)
export CUDA_HOME ?= /usr/local/cuda
endif
export MAX_JOBS ?= 2

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): setup.py Makefile $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q $(DEV_DEPS)
	$(PY) -m pip install -q --no-build-isolation -e .
	touch $@

demo: setup
	$(VENV)/bin/impulse-attn demo

test: setup
	$(PY) -m pytest tests/ -q

bench: setup
	$(PY) -m pytest benchmarks/ --benchmark-only -s

clean:
	rm -rf build *.egg-info impulse_attn/*.so .pytest_cache .benchmarks
