"""The CUDA fit's launch planner (csrc/fit_plan.h), tested without a GPU through impulse_attn._C.plan_launch.

The planner is pure host code that the CUDA launcher calls with the limits it reads from the device (compute
capability, opt-in shared memory per block, the kernel's static shared bytes, the loaded code's version, grid
and cluster limits), so these tests check what launches on real GPUs: the limits below are the published ones of
each card (opt-in shared memory per block, exact bytes). Checked: the paper configuration has a plan on every GPU
from compute capability 7.0 up, and the table of docs/kernels/fit_cuda.md is what the planner says; nothing planned
exceeds the budget (dynamic + static <= opt-in); the planned layout is the documented byte formula, its arrays
disjoint and inside the planned bytes; clusters only with sm_90 code on an sm_90 device that supports them;
too-large problems and impossible forced shapes get a clear refusal.
"""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from impulse_attn.fitting.reduced import factor_basis
from impulse_attn.fitting import compiled as fit_ext
from impulse_attn.targets import sincos_2d

_OK, _WHY = fit_ext.available("cpu")
pytestmark = pytest.mark.skipif(not _OK, reason=f"compiled extension not available: {_WHY}")
if _OK:
    from impulse_attn import _C

# name: (opt-in shared memory per block in bytes, compute capability)
GPUS = {
    "V100": (98304, (7, 0)),
    "T4": (65536, (7, 5)),
    "A100": (166912, (8, 0)),
    "L4": (101376, (8, 9)),
    "H100": (232448, (9, 0)),
}
STATIC = 32  # the kernel's static shared memory in the sm_80 / sm_90 builds (ptxas: 32 bytes smem)
WARPS = 8
NUM_SHAPES = 9

# The paper: 16x16 grid (N=256), D=512, r=64, 6 layers x 8 heads, basis = numerical rank of the encoding.
PAPER = dict(layers=6, heads=8, n=256, d=512, r=64)
PAPER_TABLE = {"H100": (0, 171648), "A100": (5, 152848), "L4": (6, 101008), "V100": (7, 97552), "T4": (8, 56080)}

# The odd shapes of the parity tests (tests/test_cuda_emulated.py, tests/test_fit_ext.py): (n, d, r, basis).
ODD = [(20, 24, 8, 5), (42, 37, 40, 34), (10, 9, 3, 3), (13, 16, 6, 7), (100, 40, 8, 12), (30, 21, 12, 9),
       (35, 64, 8, 11), (35, 64, 16, 11), (117, 64, 24, 19), (16, 32, 4, 7), (1, 1, 1, 1)]


@pytest.fixture(scope="module")
def paper_basis():
    a, _ = factor_basis(sincos_2d((16, 16), 512))
    return a.shape[1]


def limits(gpu, static=STATIC, code_version=None, **kw):
    optin, (major, minor) = GPUS[gpu]
    out = dict(cc_major=major, cc_minor=minor, smem_optin=optin, static_smem=static,
               code_version=10 * major + minor if code_version is None else code_version)
    out.update(kw)
    return out


def plan(n, d, r, basis, layers=1, heads=1, **lim):
    return _C.plan_launch(layers=layers, heads=heads, n=n, d=d, r=r, basis=basis, **lim)


def align4(x):
    return (x + 3) // 4 * 4


def documented_bytes(p, n, d, r, basis):
    """The byte formula of docs/kernels/fit_cuda.md, derived independently of the C++ layout code."""
    cl, t = p["cluster"], p["tile_rows"]
    ds = -(-d // cl)
    split = cl > 1
    floats = ((align4(6 * ds * r) if p["state"] == "shared" else 0)
              + (align4(basis * ds) if p["b"] == "shared" else 0)
              + (6 if split else 4) * align4(basis * r)
              + (3 if split else 2) * align4(basis * basis)
              + 2 * align4(t * basis)
              + (2 if split else 1) * align4(2 * r)
              + align4(WARPS * n) + align4(WARPS + 1))
    return 4 * floats


def check_plan(p, n, d, r, basis, lim):
    """Every invariant of one planned launch shape."""
    assert p["dynamic_bytes"] + lim["static_smem"] <= lim["smem_optin"], p
    assert p["dynamic_bytes"] == documented_bytes(p, n, d, r, basis), p
    lay = p["layout"]
    assert p["dynamic_bytes"] == 4 * lay["total"]
    cl = p["cluster"]
    if cl > 1:
        assert lim["cc_major"] >= 9 and lim["code_version"] >= 90 and lim.get("cluster_launch", True)
    ns, ds = -(-n // cl), -(-d // cl)
    assert (p["rows_per_block"], p["cols_per_block"]) == (ns, ds)
    if p["tiled"]:
        assert p["tile_rows"] % WARPS == 0 and p["tile_rows"] >= WARPS  # the same bits as untiled
    else:
        assert p["tile_rows"] == ns
    sizes = dict(state=6 * ds * r if p["state"] == "shared" else 0, bs=basis * ds if p["b"] == "shared" else 0,
                 bq=basis * r, bk=basis * r, core=basis * basis, u=p["tile_rows"] * basis,
                 w=p["tile_rows"] * basis, c=basis * basis, dbq=basis * r, dbk=basis * r, colf=2 * r,
                 rowbuf=WARPS * n, lossp=WARPS + 1)
    if cl > 1:
        sizes.update(bqp=basis * r, bkp=basis * r, cp=basis * basis, colp=2 * r)
    else:  # one block: the partial arrays are the full ones
        assert (lay["bqp"], lay["bkp"], lay["cp"], lay["colp"]) == (lay["bq"], lay["bk"], lay["c"], lay["colf"])
    spans = sorted((lay[k], lay[k] + v, k) for k, v in sizes.items() if v > 0)
    for (lo, hi, name), (lo2, _, name2) in zip(spans, spans[1:]):
        assert hi <= lo2, f"{name} overlaps {name2}"
    assert spans[0][0] >= 0 and spans[-1][1] <= lay["total"]
    assert all(lay[k] % 4 == 0 for k in sizes if sizes[k] > 0)  # 16-byte aligned arrays
    for k in ("state", "bs"):
        if sizes[k] == 0:
            assert lay[k] == -1


def test_planner_compiles_without_cuda_or_torch(tmp_path):
    """fit_plan.cpp is plain C++: it builds with only the standard library and csrc/ on the include path."""
    import shutil
    import subprocess
    from pathlib import Path
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    csrc = Path(__file__).resolve().parents[1] / "csrc"
    text = (csrc / "fit_plan.h").read_text() + (csrc / "fit_plan.cpp").read_text()
    assert "cuda" not in "".join(line for line in text.splitlines() if line.startswith("#include")).lower()
    assert "torch" not in "".join(line for line in text.splitlines() if line.startswith("#include")).lower()
    res = subprocess.run([cxx, "-std=c++17", "-Wall", "-Wextra", "-Werror", "-c", str(csrc / "fit_plan.cpp"),
                          "-I", str(csrc), "-o", str(tmp_path / "fit_plan.o")], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr


def test_catalogue():
    shapes = _C.launch_shapes()
    assert [s["shape"] for s in shapes] == list(range(NUM_SHAPES))
    assert [s["cluster"] for s in shapes] == [8, 4, 8, 8, 1, 1, 1, 1, 1]
    # The smallest shape is last: one block, state and B in global memory, map rows in tiles.
    assert (shapes[-1]["state"], shapes[-1]["b"], shapes[-1]["tiled"]) == ("global", "global", True)
    # Every combination is distinct.
    assert len({(s["cluster"], s["state"], s["b"], s["tiled"]) for s in shapes}) == NUM_SHAPES


def test_paper_basis_is_the_encodings_rank(paper_basis):
    assert paper_basis == 27


@pytest.mark.parametrize("gpu", GPUS)
def test_paper_config_runs_on_every_gpu(gpu, paper_basis):
    lim = limits(gpu)
    res = plan(basis=paper_basis, **PAPER, **lim)
    assert res["plans"], res["reason"]
    first = res["plans"][0]
    assert (first["shape"], first["dynamic_bytes"]) == PAPER_TABLE[gpu]
    for p in res["plans"]:
        check_plan(p, PAPER["n"], PAPER["d"], PAPER["r"], paper_basis, lim)
        assert (p["heads_per_launch"], p["launches"]) == (48, 1)


def test_paper_table_details(paper_basis):
    """The rest of the documented table: the tiles and the full order on each GPU."""
    order = {gpu: [p["shape"] for p in plan(basis=paper_basis, **PAPER, **limits(gpu))["plans"]] for gpu in GPUS}
    assert order == {"V100": [7, 8], "T4": [8], "A100": [5, 6, 7, 8], "L4": [6, 7, 8],
                     "H100": [0, 2, 3, 5, 6, 7, 8]}
    tiles = {gpu: plan(basis=paper_basis, **PAPER, **limits(gpu))["plans"][0]["tile_rows"] for gpu in GPUS}
    assert tiles == {"V100": 256, "T4": 64, "A100": 256, "L4": 16, "H100": 32}


@pytest.mark.parametrize("gpu", GPUS)
@pytest.mark.parametrize("static", [0, STATIC, 1024, 8192])
def test_nothing_planned_exceeds_the_budget(gpu, static, paper_basis):
    for n, d, r, basis in ODD + [(256, 512, 64, paper_basis), (196, 384, 64, 27), (1024, 768, 64, 40)]:
        lim = limits(gpu, static=static)
        res = plan(n, d, r, basis, layers=2, heads=3, **lim)
        for p in res["plans"]:
            check_plan(p, n, d, r, basis, lim)
        if not res["plans"]:
            assert "does not fit this GPU" in res["reason"]


def test_static_bytes_come_off_the_budget(paper_basis):
    # On a V100 the paper's shape 7 needs 97552 dynamic bytes: with the kernel's static bytes it fits in 98304,
    # with 1 KiB of static variables it no longer does and the planner moves to the tiled shape.
    assert plan(basis=paper_basis, **PAPER, **limits("V100", static=32))["plans"][0]["shape"] == 7
    assert plan(basis=paper_basis, **PAPER, **limits("V100", static=1024))["plans"][0]["shape"] == 8
    budget = 98304 - 97552
    assert plan(basis=paper_basis, **PAPER, **limits("V100", static=budget))["plans"][0]["shape"] == 7
    assert plan(basis=paper_basis, **PAPER, **limits("V100", static=budget + 1))["plans"][0]["shape"] == 8


def test_clusters_only_with_sm90_code_on_sm90(paper_basis):
    def clusters(**lim):
        return [p["shape"] for p in plan(basis=paper_basis, **PAPER, **lim)["plans"] if p["cluster"] > 1]

    assert clusters(**limits("H100")) == [0, 2, 3]
    # A build for 8.0(+PTX) on an H100: its code has no cluster paths.
    assert clusters(**limits("H100", code_version=80)) == []
    assert clusters(**limits("H100", code_version=89)) == []
    # A device without cluster launch support, and code for sm_90 on a pre-sm_90 device.
    assert clusters(**limits("H100", cluster_launch=False)) == []
    assert clusters(**limits("A100", code_version=90)) == []
    for gpu in ("V100", "T4", "A100", "L4"):
        assert clusters(**limits(gpu)) == []
    # Forcing a cluster shape where it cannot run is refused, saying why.
    res = plan(basis=paper_basis, shape=0, **PAPER, **limits("H100", code_version=80))
    assert not res["plans"] and "TORCH_CUDA_ARCH_LIST" in res["reason"] and "8.0" in res["reason"]
    res = plan(basis=paper_basis, shape=1, **PAPER, **limits("L4"))
    assert not res["plans"] and "compute capability 9.0" in res["reason"] and "8.9" in res["reason"]


def test_small_problems_keep_the_fast_shapes_first():
    # State on chip whenever it fits: cluster of 8 on the H100, one block with everything in shared memory on
    # the others.
    assert plan(20, 24, 8, 5, **limits("H100"))["plans"][0]["shape"] == 0
    for gpu in ("V100", "T4", "A100", "L4"):
        assert plan(20, 24, 8, 5, **limits(gpu))["plans"][0]["shape"] == 4


def test_forced_shapes():
    lim = limits("H100")
    for shape in range(NUM_SHAPES):
        res = plan(42, 37, 40, 34, shape=shape, **lim)
        assert [p["shape"] for p in res["plans"]] == [shape], res["reason"]
        check_plan(res["plans"][0], 42, 37, 40, 34, lim)
    for bad in (NUM_SHAPES, -2):
        res = plan(42, 37, 40, 34, shape=bad, **lim)
        assert not res["plans"] and "does not exist" in res["reason"]


def test_tiles_are_capped_and_shrink_to_fit(paper_basis):
    lim = limits("H100")
    for cap, tile in ((64, 64), (8, 8), (20, 16), (1000, 256)):
        p = plan(basis=paper_basis, shape=8, max_tile_rows=cap, **PAPER, **lim)["plans"][0]
        assert p["tile_rows"] == tile
    # On a T4 shape 6 (B in shared memory, 55 KB of it at the paper's size) leaves no room for even 8 rows.
    res = plan(basis=paper_basis, shape=6, **PAPER, **limits("T4"))
    assert not res["plans"] and "tiles of 8" in res["reason"]


def test_heads_beyond_the_grid_run_in_several_launches():
    res = plan(20, 24, 8, 5, layers=6, heads=8, max_grid_y=20, **limits("A100"))
    p = res["plans"][0]
    assert (p["heads_per_launch"], p["launches"]) == (20, 3)
    p = plan(20, 24, 8, 5, layers=3000, heads=100, **limits("A100"))["plans"][0]
    assert (p["heads_per_launch"], p["launches"]) == (65535, 5)


def test_too_large_problems_are_refused_clearly():
    res = plan(4096, 512, 64, 27, **limits("T4"))
    assert not res["plans"]
    why = res["reason"]
    assert "does not fit this GPU" in why and "N=4096" in why and "65504" in why and "Reduce" in why
    res = plan(256, 512, 64, 400, **limits("H100"))  # a basis of 400: 640 KB per basis x basis array
    assert not res["plans"] and "basis=400" in res["reason"]
    res = plan(0, 512, 64, 27, **limits("H100"))
    assert not res["plans"] and "every size must be >= 1" in res["reason"]
    res = plan(256, 70000, 64, 27, **limits("H100"))
    assert not res["plans"] and "not supported" in res["reason"]
    res = plan(256, 512, 64, 27, **limits("H100", static=300000))
    assert not res["plans"] and "static" in res["reason"]


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 2048), d=st.integers(1, 4096), r=st.integers(1, 256), basis=st.integers(1, 128),
       gpu=st.sampled_from(sorted(GPUS)), static=st.integers(0, 4096), code=st.sampled_from([70, 75, 80, 86, 90]),
       cluster_launch=st.booleans(), cap=st.integers(1, 300))
def test_planner_invariants_hold_everywhere(n, d, r, basis, gpu, static, code, cluster_launch, cap):
    lim = limits(gpu, static=static, code_version=code, cluster_launch=cluster_launch)
    res = _C.plan_launch(layers=2, heads=3, n=n, d=d, r=r, basis=basis, max_tile_rows=cap, **lim)
    for p in res["plans"]:
        check_plan(p, n, d, r, basis, lim)
        if p["tiled"]:
            assert p["tile_rows"] <= max(WARPS, cap // WARPS * WARPS)
    ids = [p["shape"] for p in res["plans"]]
    assert ids == sorted(ids)
    assert bool(ids) != bool(res["reason"])
