"""Table and plot of "what makes the prior pay off" (experiments/what_pays_off.sh), and the rule that picks its size.

Every variant changes one factor of the study's model at one data size, same data, budget and seeds. Gains are
paired by seed against two runs of the data-efficiency study at that size: random init and the default impulse
init (closed form). The variant "impulse (default)" reruns the latter with this code, so its row measures how far
a rerun of the same setting lands (thread count, code version), the floor under which a difference means nothing.

    python experiments/what_pays_off.py --pick-size [--study runs/study]    # prints the size to run at
    python experiments/what_pays_off.py [--runs runs/pays_off] [--study runs/study] [--figure PATH]

The size is fixed before any variant runs: the size where the study's mean paired val gain of the default
impulse init over random is largest (ties: the smaller size).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_efficiency import _pm as _acc, load  # noqa: E402  (same folder layout: RUNS/pc<N>/<variant>/seed<k>/)

SCRIPT = Path(__file__).resolve().parent / "what_pays_off.sh"
RANDOM = "random"
DEFAULT = "impulse (closed form)"
# A variant that changes a second thing besides the init is also paired with the run that changes only that thing:
# k = 3 with 9 heads against random init with 9 heads (the head count alone moves random init's accuracy).
CONTROLS = {"impulse k3, 9 heads, cycled": "random, 9 heads"}


def script_labels() -> list:
    """The variant labels in what_pays_off.sh, in its order (runs of a subset, ONLY=..., are labelled by them)."""
    block = SCRIPT.read_text().split("VARIANTS=(", 1)[1].split("\n)", 1)[0]
    return [line.strip().strip('"').split(":", 1)[0] for line in block.splitlines() if line.strip().startswith('"')]


def paired_gains(runs: dict, base: dict) -> list:
    """Val accuracy minus the base's, seed by seed, for the seeds both have (points)."""
    return [100 * (runs[s]["val"] - base[s]["val"]) for s in sorted(runs) if s in base]


def pick_size(study: dict) -> int:
    gains = {}
    for size, per in study.items():
        g = paired_gains(per.get(DEFAULT, {}), per.get(RANDOM, {}))
        if g:
            gains[size] = statistics.fmean(g)
    if not gains:
        raise SystemExit("the study has no paired random / impulse (closed form) runs yet")
    best = max(gains.values())
    return min(s for s, g in gains.items() if g == best)


def _pm(values: list) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:+.1f}"
    return f"{statistics.fmean(values):+.1f} ± {statistics.stdev(values):.1f}"


def rows(size: int, variants: dict, study: dict) -> list:
    """One row per variant (in the script's order), the study's random and default first."""
    random, default = study.get(RANDOM, {}), study.get(DEFAULT, {})
    out = []
    for label, runs in [("random (study)", random), ("impulse, closed form (study)", default)] + list(variants.items()):
        if not runs:
            continue
        seeds = sorted(runs)
        out.append({
            "label": label, "seeds": seeds,
            "val": [runs[s]["val"] for s in seeds],
            "test": [runs[s]["test"] for s in seeds if runs[s]["test"] is not None],
            "vs_random": paired_gains(runs, random) if runs is not random else [],
            "vs_default": paired_gains(runs, default) if runs is not default else [],
            "control": CONTROLS[label] if variants.get(CONTROLS.get(label)) else None,
            "vs_control": paired_gains(runs, variants.get(CONTROLS.get(label)) or {}),
        })
    return out


def table(size: int, rs: list) -> str:
    lines = [f"{size} images per class; gains are val points, paired by seed with the study's runs",
             "",
             "| variant | seeds | val acc | test acc | vs random | vs default impulse | vs its own control |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rs:
        lines.append(f"| {r['label']} | {','.join(map(str, r['seeds']))} | {_acc(r['val'])} | {_acc(r['test'])} | "
                     f"{_pm(r['vs_random']) if r['vs_random'] else '—'} | "
                     f"{_pm(r['vs_default']) if r['vs_default'] else '—'} | "
                     f"{_pm(r['vs_control']) + ' (' + r['control'] + ')' if r['vs_control'] else '—'} |")
    return "\n".join(lines)


def plot(size: int, rs: list, path: Path) -> Path:
    """Paired val gains over random init (and over a variant's own control, in orange), one line per variant."""
    from impulse_attn.plots import pyplot, save_figure
    plt = pyplot()
    shown = [(r["label"], r["vs_random"], "C0") for r in rs if r["vs_random"]]
    shown += [(f"{r['label']} vs {r['control']}", r["vs_control"], "C1") for r in rs if r["vs_control"]]
    fig, ax = plt.subplots(figsize=(9.5, 0.45 * len(shown) + 1.6))
    for i, (_, gains, colour) in enumerate(shown):
        y = len(shown) - 1 - i
        ax.scatter(gains, [y] * len(gains), color=colour, s=18, alpha=0.6)
        ax.plot([statistics.fmean(gains)], [y], marker="|", color="C3", markersize=16, mew=2)
    ax.set_yticks(range(len(shown)))
    ax.set_yticklabels([f"{label} ({len(g)} seed{'s' * (len(g) > 1)})" for label, g, _ in reversed(shown)],
                       fontsize=8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("val points minus random init's, same seed (orange: minus its own control's)\n"
                  "dots: seeds, bar: mean", fontsize=9)
    ax.set_title(f"what makes the prior pay off ({size} images per class)", fontsize=10)
    ax.grid(alpha=0.3, axis="x")
    return save_figure(fig, path, 110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/pays_off", help="what_pays_off.sh's output folder")
    p.add_argument("--study", default="runs/study", help="the data-efficiency study's output folder")
    p.add_argument("--pick-size", action="store_true", help="print the size to run at and stop")
    p.add_argument("--figure", default=None, help="where to write the plot (default: RUNS/what_pays_off.png)")
    args = p.parse_args()
    study = load(Path(args.study))
    if args.pick_size:
        print(pick_size(study))
        return
    runs = Path(args.runs)
    done = load(runs)
    if not done:
        raise SystemExit(f"no finished runs under {runs}")
    texts = []
    from impulse_attn.training.compare import slug
    order = script_labels()
    by_slug = {slug(label): label for label in order}
    for size, found in sorted(done.items()):
        variants = {by_slug.get(slug(k), k): v for k, v in found.items() if v}
        variants = dict(sorted(variants.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order)))
        rs = rows(size, variants, study.get(size, {}))
        texts.append(table(size, rs))
        fig = plot(size, rs, Path(args.figure) if args.figure else runs / "what_pays_off.png")
    text = "\n\n".join(texts)
    (runs / "what_pays_off.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\ntable: {runs / 'what_pays_off.md'}\nplot: {fig}")


if __name__ == "__main__":
    main()
