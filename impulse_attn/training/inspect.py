"""``impulse-attn inspect RUN``: a trained checkpoint's attention maps next to the same model's maps at init.

The model at init is rebuilt from the run's config exactly as the training loop built it (same seeds, same fit),
the trained one is loaded from ``checkpoint.pt`` (weights only). Maps are read through ``factory.attention_probe``:
a Simple ViT's own ``attention_maps``, or ``impulse_attn.timm.attention_maps`` for a timm model (grid tokens
only; impulse offsets from the run's init record). Both see the same evaluation images; the model at init is also
read with no content (its maps on the pseudo-input: what the init shaped), so the picture and the table put what
the init set beside what real images get from it. Per layer and head (``analysis.head_stats``): mass still on the
impulse target, the best single offset of the k×k window and its mass (convolution-likeness, for any init), mass
inside the window, attention distance, entropy, and how far the map moved (total variation between init and
trained maps). The run's own step-0 figures on its training images (``init.on_data``) are copied beside them.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from ..analysis import head_stats, map_change
from .checkpoint import REQUIRED, check_train_state, load_checkpoint
from .config import TrainConfig
from .data import build_datasets, init_images
from .errors import UserError
from .factory import attention_probe, build_model
from .loop import CHECKPOINT
from .metrics import write_json


@dataclass
class Inspection:
    out: Path
    rows: List[dict]        # one per (layer, head): stats at init and trained, and the map change
    picture: Path
    table: str


def _eval_images(data, count: int) -> torch.Tensor:
    """``count`` images spread over the evaluation set (all of it when it holds fewer)."""
    ds = data.evals[data.primary]
    count = min(count, len(ds))
    step = max(1, len(ds) // count)
    return torch.stack([ds[i][0] for i in range(0, step * count, step)[:count] if i < len(ds)])


def _model_at_init(cfg: TrainConfig, data):
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    images = init_images(data, cfg.seed) if cfg.family.on_data is not None else None
    return build_model(cfg, data.num_classes, data.image_size, data.channels, images=images)


def inspect_run(run, images: int = 64, query: Optional[Sequence[int]] = None, out=None,
                log: Callable[[str], None] = print) -> Inspection:
    """Compare the maps of the checkpoint in ``run`` with the maps at init; writes inspect.json and maps.png to
    ``out`` (default: ``run``)."""
    run = Path(run)
    if not run.is_dir():
        what = "is a file, not a run folder" if run.exists() else "does not exist"
        raise UserError(f"run folder {run} {what}", "pass the --out folder of an impulse-attn train run")
    if not (run / CHECKPOINT).is_file():
        raise UserError(f"{run} is not a run folder: it holds no {CHECKPOINT}",
                        "pass the --out folder of an impulse-attn train run")
    state = load_checkpoint(run / CHECKPOINT, REQUIRED)
    check_train_state(state, run / CHECKPOINT)
    try:
        cfg = TrainConfig.from_dict(state["config"]).resolved()
    except (UserError, TypeError, KeyError):
        raise UserError(f"checkpoint {run / CHECKPOINT} holds no readable run settings",
                        "inspect a run written by this version of impulse-attn") from None
    if cfg.family.maps is None and cfg.family.probe is None:
        raise UserError(f"{run} trained a {cfg.model}, which has no attention maps",
                        "inspect a run of a model with attention or token-mixing maps (see docs/families.md)")
    if not isinstance(images, int) or images < 1:
        raise UserError(f"--images must be a positive integer, got {images!r}", "pass e.g. --images 64")
    data = build_datasets(cfg)
    init_model, init_record = _model_at_init(cfg, data)
    trained, _ = _model_at_init(cfg, data)
    try:
        trained.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"checkpoint {run / CHECKPOINT} does not fit the model of its own settings "
                        f"({str(e).splitlines()[0][:160]})", "the run folder was changed after training") from None
    init_model.eval()
    trained.eval()
    probe_init = attention_probe(init_model, init_record)
    probe_trained = attention_probe(trained, init_record)
    grid = probe_init.grid
    if query is None:
        query = (grid[0] // 2, grid[1] // 2)
    qr, qc = (int(v) for v in query)
    if not (0 <= qr < grid[0] and 0 <= qc < grid[1]):
        raise UserError(f"--query {qr},{qc} is outside the {grid[0]}x{grid[1]} token grid",
                        f"pass a row in [0, {grid[0] - 1}] and a column in [0, {grid[1] - 1}]")
    x = _eval_images(data, images)
    with torch.no_grad():
        before, after, pseudo = probe_init.maps(x), probe_trained.maps(x), probe_init.pseudo()
    offsets = probe_init.offsets
    s0 = head_stats(before, grid, cfg.kernel_size, offsets)
    s1 = head_stats(after, grid, cfg.kernel_size, offsets)
    sp = head_stats(pseudo, grid, cfg.kernel_size, offsets)
    moved = [map_change(b, a) for b, a in zip(before, after)]
    rows = []
    for a, b, c in zip(s0, s1, sp):
        rows.append({"layer": a.layer, "head": a.head, "pseudo": c.as_dict(), "init": a.as_dict(),
                     "trained": b.as_dict(), "map_change": float(moved[a.layer][a.head])})
    out = Path(out) if out is not None else run
    out.mkdir(parents=True, exist_ok=True)
    from ..plots import plot_maps_before_after
    from ..init import get_strategy
    try:    # a query/key fit: the fit method says how the maps were made
        fitted = get_strategy(cfg.init).takes("fit_method", cfg.family.kind_for(get_strategy(cfg.init)))
    except ValueError:
        fitted = False
    title = (f"{run.name}: init {cfg.init}" + (f" ({cfg.fit_method})" if fitted else "") +
             f", epoch {state['epoch']}; attention of query ({qr},{qc}) averaged over {len(x)} images")
    picture = plot_maps_before_after([m.mean(0) for m in before], [m.mean(0) for m in after], grid,
                                     qr * grid[1] + qc, out / "maps.png", rows=rows, title=title,
                                     pseudo=[m[0] for m in pseudo])
    table = _table(rows)
    write_json(out / "inspect.json", {"run": str(run), "epoch": state["epoch"], "images": len(x),
                                      "query": [qr, qc], "kernel_size": cfg.kernel_size, "heads": rows,
                                      "layers": _layer_summary(rows), "prior_on_data": init_record.get("on_data")})
    log(table)
    if init_record.get("on_data"):
        from ..families.on_data import describe
        log(f"\nat init on {init_record['on_data']['images']} training images: "
            f"{describe(init_record['on_data']['layers'])}")
    log(f"\nper-head numbers: {out / 'inspect.json'}\nmaps at init vs trained: {picture}")
    return Inspection(out, rows, picture, table)


def _layer_summary(rows: List[dict]) -> List[dict]:
    layers = sorted({r["layer"] for r in rows})
    out = []
    for li in layers:
        rs = [r for r in rows if r["layer"] == li]
        def mean(path):
            vals = [r[path[0]][path[1]] if len(path) == 2 else r[path[0]] for r in rs]
            vals = [v for v in vals if v is not None]
            return float(np.mean(vals)) if vals else None
        out.append({"layer": li, **{f"{w}_{k}": mean((w, k)) for w in ("pseudo", "init", "trained")
                                     for k in ("target_mass", "best_offset_mass", "local_mass", "distance")},
                    "map_change": mean(("map_change",))})
    return out


def _table(rows: List[dict]) -> str:
    def f(v):
        return "—" if v is None else f"{v:.2f}"
    lines = ["| layer | mass on impulse target (init, no content / images → trained) | best single offset mass | "
             "mass in k×k window | attention distance (tokens) | map moved (TV) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for s in _layer_summary(rows):
        lines.append(f"| {s['layer']} | {f(s['pseudo_target_mass'])} / {f(s['init_target_mass'])} → "
                     f"{f(s['trained_target_mass'])} | "
                     f"{f(s['init_best_offset_mass'])} → {f(s['trained_best_offset_mass'])} | "
                     f"{f(s['init_local_mass'])} → {f(s['trained_local_mass'])} | "
                     f"{f(s['init_distance'])} → {f(s['trained_distance'])} | {f(s['map_change'])} |")
    return "\n".join(lines)
