import os
from pathlib import Path

import pytest
import torch

# Triton kernels run on the CPU through the interpreter when there is no GPU. It must be set before any module
# that defines kernels is imported, so it is set here, before test modules are collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-mini"


@pytest.fixture
def cifar_mini() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data/cifar10-mini is not present")
    return SHARED_DATA
