"""Pictures: fitted attention maps against their impulse targets, and accuracy curves of compared runs.

Matplotlib with the Agg backend (no display needed); every function writes one PNG and returns its path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch


def pyplot():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def plot_fit(maps: torch.Tensor, targets: torch.Tensor, offsets: torch.Tensor, grid: Sequence[int], path,
             query: Optional[int] = None, title: str = "", max_heads: int = 12) -> Path:
    """For each head, the target and the fitted attention of one query token, drawn on the token grid.

    maps, targets: (heads, N, N); offsets: (heads, 2); grid: (H, W) with N = H·W. ``query`` defaults to the
    token at the grid centre. Row 1: targets (a single lit token at the offset); row 2: fitted maps, each with
    its mass on the target token.
    """
    plt = pyplot()
    h, w = int(grid[0]), int(grid[1])
    if query is None:
        query = (h // 2) * w + w // 2
    heads = min(int(maps.shape[0]), max_heads)
    fig, axes = plt.subplots(2, heads, figsize=(1.6 * heads + 0.8, 4.3), squeeze=False)
    qr, qc = divmod(query, w)
    for i in range(heads):
        tgt = targets[i, query].reshape(h, w).float().numpy()
        fit = maps[i, query].reshape(h, w).float().numpy()
        dy, dx = (int(v) for v in offsets[i])
        mass = float(maps[i, query, (qr + dy) * w + (qc + dx)]) if 0 <= qr + dy < h and 0 <= qc + dx < w else 0.0
        for row, img, vmax in ((0, tgt, 1.0), (1, fit, max(float(fit.max()), 1e-6))):
            ax = axes[row, i]
            ax.imshow(img, cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            ax.plot(qc, qr, marker="+", color="cyan", markersize=7, mew=1.5)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(f"head {i}: ({dy:+d},{dx:+d})", fontsize=8)
        axes[1, i].set_title(f"mass {mass:.2f}", fontsize=8)
    axes[0, 0].set_ylabel("target", fontsize=9)
    axes[1, 0].set_ylabel("fitted", fontsize=9)
    fig.suptitle(title or f"impulse fit: attention of the query + on a {h}x{w} grid", fontsize=10)
    return save_figure(fig, path, dpi=110)


def plot_fit_result(result, x: torch.Tensor, grid: Sequence[int], path, title: str = "") -> Path:
    """``plot_fit`` for the first layer of a ``FitResult``: its maps softmax(s·X Q Kᵀ Xᵀ) on the pseudo-input X
    (N, D) the fit was made on, against the impulse targets of its offsets."""
    from .fitting import attention_maps
    from .targets import impulse_targets
    maps = attention_maps(x.to(result.q.dtype), result.q[0], result.k[0], result.scale)
    return plot_fit(maps, impulse_targets(result.offsets[0], grid), result.offsets[0], grid, path, title=title)


def save_figure(fig, path, dpi: int) -> Path:
    """Lay out, write the PNG (folders created), close the figure; returns the path."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def _stack(histories: List[List[dict]], key: str):
    """Epochs and a (runs, epochs) array of ``key``, over the epochs every run has."""
    rows = [{r["epoch"]: r[key] for r in h if key in r} for h in histories]
    epochs = sorted(set.intersection(*(set(r) for r in rows))) if rows else []
    return np.array(epochs), np.array([[r[e] for e in epochs] for r in rows], dtype=float)


def plot_curves(curves: Dict[str, List[List[dict]]], path, title: str = "", reach: Optional[float] = None,
                split: str = "test") -> Path:
    """Accuracy on ``split`` and training loss per epoch, mean over seeds with a ±1 std band, one line per label.

    curves: {label: [history of seed 0, history of seed 1, ...]}, histories as in metrics.jsonl.
    """
    plt = pyplot()
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4.2))
    acc_key = f"{split}_acc"
    for label, histories in curves.items():
        for ax, key in ((ax_acc, acc_key), (ax_loss, "train_loss")):
            epochs, vals = _stack(histories, key)
            if len(epochs) == 0:
                continue
            scale = 100.0 if key == acc_key else 1.0
            mean = vals.mean(0) * scale
            line, = ax.plot(epochs, mean, marker="o", markersize=3, label=f"{label} (n={len(histories)})")
            if len(histories) > 1:
                std = vals.std(0, ddof=1) * scale
                ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.18)
    if reach is not None:
        ax_acc.axhline(100 * reach, color="grey", lw=0.8, ls="--")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel(f"{split} accuracy (%)")
    ax_acc.set_title(f"{split} accuracy (mean ± std over seeds)", fontsize=10)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    ax_loss.set_title("training loss", fontsize=10)
    from matplotlib.ticker import MaxNLocator
    for ax in (ax_acc, ax_loss):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path, dpi=110)


def plot_maps_before_after(before: Sequence[torch.Tensor], after: Sequence[torch.Tensor], grid: Sequence[int],
                           query: int, path, rows: Optional[List[dict]] = None, title: str = "",
                           max_heads: int = 12, pseudo: Optional[Sequence[torch.Tensor]] = None) -> Path:
    """Per layer, a row of pictures per state: each head's attention of one query token at init and after training
    (and, with ``pseudo``, first the maps at init with no content: what the init shaped, beside what real images
    get).

    before, after, pseudo: per layer (heads, N, N) maps (e.g. averaged over images); grid (H, W); query: token
    index. ``rows`` (from ``training.inspect``) adds each head's best-offset mass and distance to its titles.
    """
    plt = pyplot()
    h, w = int(grid[0]), int(grid[1])
    layers = len(before)
    heads = min(int(before[0].shape[0]), max_heads)
    states = ([("init, no content", pseudo, "pseudo")] if pseudo is not None else []) + \
        [("init, images", before, "init"), ("trained, images", after, "trained")]
    per = len(states)
    fig, axes = plt.subplots(per * layers, heads, figsize=(1.25 * heads + 1.2, 1.25 * per * layers + 0.8),
                             squeeze=False)
    qr, qc = divmod(query, w)
    stats = {(r["layer"], r["head"]): r for r in rows or []}
    for li in range(layers):
        for hi in range(heads):
            for which, (_, maps, key) in enumerate(states):
                ax = axes[per * li + which, hi]
                img = maps[li][hi, query].reshape(h, w).float().numpy()
                ax.imshow(img, cmap="magma", vmin=0, vmax=max(float(img.max()), 1e-6), interpolation="nearest")
                ax.plot(qc, qr, marker="+", color="cyan", markersize=6, mew=1.2)
                ax.set_xticks([])
                ax.set_yticks([])
                s = (stats.get((li, hi)) or {}).get(key)
                if s is not None:
                    ax.set_title(f"{s['best_offset_mass']:.2f}@{tuple(s['best_offset'])} d{s['distance']:.1f}",
                                 fontsize=6)
            if hi == 0:
                for which, (label, _, _) in enumerate(states):
                    axes[per * li + which, 0].set_ylabel(f"L{li} {label}", fontsize=7)
    fig.suptitle((title + "\n" if title else "") + "cell title: best single-offset mass @ offset, attention "
                 "distance (tokens)", fontsize=8)
    return save_figure(fig, path, dpi=100)
