import contextlib
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


# --- helpers shared by the test modules (import them: ``from conftest import quiet``) ---------------------------


@contextlib.contextmanager
def single_thread():
    """Torch on one thread inside the block: tiny models gain nothing from a second thread, and on a shared
    2-core machine idle OpenMP threads spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread():
    """A module on one torch thread: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    with single_thread():
        yield


#: the per-epoch numbers two identical runs must agree on
SCORES = ("train_loss", "train_acc", "test_loss", "test_acc", "lr")


def scores(history, keys=SCORES):
    return [{k: r[k] for k in keys if k in r} for r in history]


def quiet(_msg):
    """A ``log`` that drops every line."""


def run_config(base: dict, tmp_path: Path, name: str = "run", **kw):
    """``TrainConfig(**base)`` writing to ``tmp_path / name``, with ``kw`` overriding."""
    from impulse_attn.training import TrainConfig
    return TrainConfig(**{**base, "out": str(tmp_path / name), **kw})


def snapshot(folder: Path) -> dict:
    """{file name: bytes} of the files directly in ``folder``."""
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def image_tree(root: Path, split: str, classes, per_class: int, size: int = 12, fmt: str = "png") -> None:
    """An image-folder split: ``root/split/<class>/000.<fmt>, 001.<fmt>, ...``, ``per_class`` flat-coloured
    RGB images of ``size``² per class (the colour differs by class and index)."""
    from PIL import Image
    for ci, c in enumerate(classes):
        d = Path(root) / split / str(c)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (20 * ci % 256, 10 * i % 256, 100)).save(d / f"{i:03d}.{fmt}")


def cli_refused(argv, capsys, *needles) -> str:
    """Run the command line on ``argv``: it must exit 2 with one error line, no traceback, holding every needle;
    returns that line."""
    from impulse_attn import cli
    code = cli.main(argv)
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, out, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def argmax_on_offset(maps, offsets, grid, valid) -> int:
    """Every row of maps (B, heads, N, N) whose target (row + head offset) is on the grid and ``valid(row, j)`` has
    its argmax on the target; returns how many rows were checked (written out row by row, as a reader checks it)."""
    h, w = grid
    checked = 0
    for head, (dr, dc) in enumerate(offsets.tolist()):
        for r in range(h):
            for c in range(w):
                tr, tc = r + dr, c + dc
                if not (0 <= tr < h and 0 <= tc < w):
                    continue
                i, j = r * w + c, tr * w + tc
                row = maps[:, head, i]
                if not valid(row, j):
                    continue
                assert bool((row.argmax(-1) == j).all()), (head, r, c)
                checked += 1
    return checked


def timm_softmax(model, attentions, x) -> list:
    """The softmax each of timm's ``attentions`` computes in ``model(x)`` (fused attention off, read at its
    ``attn_drop``), in call order: the library's own maps, eval mode."""
    out, hooks = [], []
    for attn in attentions:
        attn.fused_attn = False
        hooks.append(attn.attn_drop.register_forward_hook(lambda m, a, o: out.append(o.detach())))
    run_hooked(model, x, hooks)
    return out


def run_hooked(model, x, hooks) -> None:
    """``model(x)`` in eval mode without gradients, then remove ``hooks`` (the handles the caller registered)."""
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()

