"""Markdown table of experiments/init_mechanism.py's results (runs/mechanism/results.jsonl): val accuracy (%) at
selected epochs and at the end, mean ± std over the seeds each variant has, and the init's weights.

    python experiments/mechanism_table.py [--results runs/mechanism/results.jsonl] [--figure PATH]

With --figure, also a plot of val accuracy per epoch (one line per variant, mean over its seeds) and of the gap to
random init, epoch by epoch.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ORDER = ["random", "recipe", "recipe-resplit", "recipe-rowspace", "recipe-resplit-complement",
         "closed-separable-0.3-0.1", "closed-laplace-0.1-0.1", "closed-separable-0.1-0.4", "closed-laplace-0.1-0.4",
         "closed-laplace-0.1-0.4-c"]
WHAT = {
    "random": "random init, softmax scale r^-½ = 0.25",
    "recipe": "the published iterative recipe (scale auto = 0.4)",
    "recipe-resplit": "the recipe's map on X, split symmetrically, nothing outside X's row space",
    "recipe-rowspace": "the recipe's Q, K without their parts outside X's row space (asymmetry kept)",
    "recipe-resplit-complement": "recipe-resplit plus a random init outside the row space",
    "closed-separable-0.3-0.1": "closed form, impulse (row+column) target, mass 0.3, scale 0.1 (the old default)",
    "closed-laplace-0.1-0.1": "closed form, laplace (local) target, mass 0.1, scale 0.1",
    "closed-separable-0.1-0.4": "closed form, impulse target, mass 0.1, scale 0.4",
    "closed-laplace-0.1-0.4": "closed form, laplace target, mass 0.1, scale 0.4 (the new default)",
    "closed-laplace-0.1-0.4-c": "the new default plus a random init outside the row space",
}


def pm(values) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def plot(by: dict, path: Path) -> Path:
    from impulse_attn.plots import pyplot, save_figure
    plt = pyplot()
    fig, (ax, ax_gap) = plt.subplots(1, 2, figsize=(12, 4.5))
    random = {r["seed"]: r for r in by.get("random", [])}
    for name in ORDER + sorted(set(by) - set(ORDER)):
        rs = by.get(name, [])
        if not rs:
            continue
        n = min(len(r["val_acc"]) for r in rs)
        mean = [statistics.fmean(100 * r["val_acc"][e] for r in rs) for e in range(n)]
        epochs = list(range(1, n + 1))
        style = dict(lw=2.2, color="k") if name == "random" else dict(lw=1.4)
        ax.plot(epochs, mean, label=f"{name} ({len(rs)} seed{'s' * (len(rs) > 1)})", **style)
        # the gap is paired seed by seed, like the table's; zip keeps the epochs every pair has
        diffs = [[100 * (a - b) for a, b in zip(r["val_acc"], random[r["seed"]]["val_acc"])]
                 for r in rs if r["seed"] in random]
        gap = [statistics.fmean(d) for d in zip(*diffs)]
        if gap:
            ax_gap.plot(epochs[:len(gap)], gap, **style)
    ax.set_ylabel("val accuracy (%), 10,000 images")
    ax.set_title("the init's effect over training (500/class, no augmentation)", fontsize=10)
    ax_gap.axhline(0, color="grey", lw=0.8)
    ax_gap.set_ylabel("val accuracy minus random init's, same seed (points)")
    ax_gap.set_title("gap to random init", fontsize=10)
    for a in (ax, ax_gap):
        a.set_xlabel("epoch")
        a.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path, 110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="runs/mechanism/results.jsonl", help="init_mechanism.py's results")
    p.add_argument("--epochs", default="1,3,5,10", help="epochs to show in the table")
    p.add_argument("--figure", default=None, help="also write the curves to this picture")
    args = p.parse_args()
    rows = [json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()]
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    epochs = [int(e) for e in args.epochs.split(",")]
    head = ("| variant | what | seeds | " + " | ".join(f"epoch {e}" for e in epochs) +
            " | final (15) | gain over random (paired) | ‖Q‖, ‖K‖ |")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    random = {r["seed"]: r["final"] for r in by.get("random", [])}
    for name in ORDER + sorted(set(by) - set(ORDER)):
        rs = sorted(by.get(name, []), key=lambda r: r["seed"])
        if not rs:
            continue
        cells = [pm([r["val_acc"][e - 1] for r in rs]) for e in epochs]
        gains = [r["final"] - random[r["seed"]] for r in rs if r["seed"] in random]
        gain = "—" if name == "random" or not gains else (
            f"{100 * statistics.fmean(gains):+.1f}" + (f" ± {100 * statistics.stdev(gains):.1f}" if len(gains) > 1
                                                        else ""))
        norms = "—" if "q_norm" not in rs[0] else f"{rs[0]['q_norm']:.1f}, {rs[0]['k_norm']:.1f}"
        print(f"| {name} | {WHAT.get(name, '')} | {','.join(str(r['seed']) for r in rs)} | " + " | ".join(cells) +
              f" | {pm([r['final'] for r in rs])} | {gain} | {norms} |")

    if args.figure:
        print(f"\nfigure: {plot(by, Path(args.figure))}")


if __name__ == "__main__":
    main()
