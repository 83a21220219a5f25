"""The editable install works offline with the pip a GPU machine may bring: `pip install --no-build-isolation
--no-index -e .`, as `make gpu-check` (benchmarks/gpu_check/build.py) and `make setup` run it.

Without pyproject.toml, a pip older than 25.3 with `wheel` installed takes the legacy `setup.py develop` path, and
setuptools >= 80 turns `develop` into a second pip run with build isolation, which downloads setuptools: offline
that fails. pyproject.toml's [build-system] keeps pip on the PEP 660 path, which builds with the setuptools that
is installed. The test builds that situation in a fresh virtual environment: pip 25.x (< 25.3) and wheel from the
package index pip is configured with (it skips, saying so, where none can be reached), this interpreter's packages
(torch, setuptools >= 80) reused through a .pth file, as --system-site-packages would, and no index at all for the
install itself. The compiled extension is left out (IMPULSE_ATTN_NO_EXT=1): the build path is what is tested.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PIP = "pip>=25,<25.3"   # the last releases with the legacy editable path


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)


@pytest.fixture(scope="module")
def wheels(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    out = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", folder,
                PIP, "wheel"])
    if out.returncode != 0 or not list(folder.glob("pip-*.whl")) or not list(folder.glob("wheel-*.whl")):
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"{PIP} and wheel could not be fetched from the configured package index: {tail}")
    return folder


def test_editable_install_without_an_index_under_pip_25_with_wheel(tmp_path, wheels):
    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    py = venv / "bin" / "python"
    site = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    Path(site, "reuse-test-interpreter.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip_wheel = next(wheels.glob("pip-*.whl"))
    out = _run([py, pip_wheel / "pip", "install", "--no-index", "--no-deps", "--ignore-installed",
                *sorted(wheels.glob("*.whl"))])
    assert out.returncode == 0, out.stderr[-3000:]
    versions = _run([py, "-c", "import importlib.metadata as m; print(m.version('pip'), m.version('wheel'), "
                               "m.version('setuptools'))"]).stdout.split()
    assert versions[0].startswith("25.") and int(versions[2].split(".")[0]) >= 80, versions

    offline = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    offline.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
                   IMPULSE_ATTN_NO_EXT="1")
    egg_info = REPO / "impulse_attn.egg-info"
    had_egg_info = egg_info.exists()
    try:
        out = _run([py, "-m", "pip", "install", "--no-build-isolation", "--no-index", "-e", REPO], env=offline,
                   cwd=tmp_path)
    finally:
        if not had_egg_info:   # the legacy path writes it into the checkout
            shutil.rmtree(egg_info, ignore_errors=True)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert "setup.py develop" not in text, "pip took the legacy editable path"
    where = _run([py, "-c", "import impulse_attn; print(impulse_attn.__file__)"], cwd=tmp_path, env=offline)
    assert where.returncode == 0, where.stderr[-2000:]
    assert Path(where.stdout.strip()).resolve().parent == REPO / "impulse_attn"
