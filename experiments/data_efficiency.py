"""Table and plot of the data-efficiency study (experiments/data_efficiency.sh).

Reads every finished run under RUNS/pc<N>/<variant>/seed<k>/ (summary.json, metrics.jsonl) and writes
RUNS/data_efficiency.md (final val and test accuracy, mean ± std over seeds, and the gain over random init with
its paired seed spread) and RUNS/data_efficiency.png (val accuracy vs images per class, one line per init, every
seed drawn; right panel: gain over random, seed by seed). Usage (repository root):

    python experiments/data_efficiency.py [--runs runs/study] [--figure docs/figures/data_efficiency.png]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def load(runs: Path) -> dict:
    """{size: {variant label: {seed: {"val": acc, "test": acc, "epochs": e}}}} for the finished runs."""
    out: dict = {}
    for size_dir in sorted(runs.glob("pc*")):
        m = re.fullmatch(r"pc(\d+)", size_dir.name)
        if not m:
            continue
        size = int(m.group(1))
        summary = size_dir / "summary.json"
        labels = {}
        if summary.is_file():  # labels as the comparison wrote them (the folder names are slugs)
            from impulse_attn.training.compare import slug
            labels = {slug(label): label for label in json.loads(summary.read_text())["variants"]}
        for label in labels.values():  # keep the comparison's order of variants
            out.setdefault(size, {}).setdefault(label, {})
        for run in sorted(size_dir.glob("*/seed*/summary.json")):
            s = json.loads(run.read_text())
            variant = labels.get(run.parent.parent.name, run.parent.parent.name)
            seed = int(run.parent.name[4:])
            if "val" not in s.get("final", {}):
                raise SystemExit(f"{run}: the run has no final val accuracy (its splits: "
                                 f"{sorted(s.get('final', {}))}); the study compares inits on val, so every run must "
                                 f"evaluate on a val split (rerun it with one, or move it out of {runs})")
            out.setdefault(size, {}).setdefault(variant, {})[seed] = {
                "val": s["final"]["val"], "test": s["final"].get("test"),
                "epochs": s["epochs"], "seconds": s.get("train_seconds")}
    return out


def _pm(values) -> str:
    values = [100 * v for v in values]
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(results: dict) -> str:
    variants = []
    for per in results.values():
        variants += [v for v in per if v not in variants]
    lines = ["| images / class | epochs | init | seeds | val acc | test acc | gain over random (val, paired) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for size in sorted(results):
        per = results[size]
        random = per.get("random", {})
        for v in variants:
            runs = per.get(v, {})
            if not runs:
                continue
            seeds = sorted(runs)
            gains = [runs[s]["val"] - random[s]["val"] for s in seeds if s in random]
            gain = "—" if v == "random" or not gains else (
                f"{100 * statistics.fmean(gains):+.1f}" + (f" ± {100 * statistics.stdev(gains):.1f}"
                                                           if len(gains) > 1 else ""))
            lines.append(f"| {size} | {runs[seeds[0]]['epochs']} | {v} | {len(seeds)} | "
                         f"{_pm([runs[s]['val'] for s in seeds])} | "
                         f"{_pm([runs[s]['test'] for s in seeds if runs[s]['test'] is not None])} | {gain} |")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> Path:
    from impulse_attn.plots import pyplot, save_figure
    plt = pyplot()
    fig, (ax, ax_gain) = plt.subplots(1, 2, figsize=(12, 4.5))
    variants = []
    for per in results.values():
        variants += [v for v in per if v not in variants]
    sizes = sorted(results)
    for v in variants:
        xs, means, pts = [], [], []
        gx, gains = [], []
        for size in sizes:
            runs = results[size].get(v, {})
            if not runs:
                continue
            vals = [100 * r["val"] for r in runs.values()]
            xs.append(size)
            means.append(statistics.fmean(vals))
            pts += [(size, a) for a in vals]
            random = results[size].get("random", {})
            if v != "random":
                gains += [(size, 100 * (runs[s]["val"] - random[s]["val"])) for s in runs if s in random]
        line, = ax.plot(xs, means, marker="o", label=v)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color=line.get_color(), s=10, alpha=0.5)
        if gains:
            by_size = {}
            for s, g in gains:
                by_size.setdefault(s, []).append(g)
            gs = sorted(by_size)
            ax_gain.plot(gs, [statistics.fmean(by_size[s]) for s in gs], marker="o", color=line.get_color(),
                         label=v)
            ax_gain.scatter([g[0] for g in gains], [g[1] for g in gains], color=line.get_color(), s=10,
                            alpha=0.5)
    for a in (ax, ax_gain):
        a.set_xscale("log")
        a.set_xticks(sizes)
        a.minorticks_off()
        a.set_xticklabels([str(s) for s in sizes])
        a.set_xlabel("training images per class (fixed number of optimizer steps)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    ax.set_ylabel("final val accuracy (%), 10,000 images")
    ax.set_title("accuracy vs data (line: mean over seeds; dots: seeds)", fontsize=10)
    ax_gain.axhline(0, color="grey", lw=0.8)
    ax_gain.set_ylabel("val accuracy minus random init's, same seed (points)")
    ax_gain.set_title("gain over random init", fontsize=10)
    return save_figure(fig, path, 110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/study", help="the study's output folder")
    p.add_argument("--figure", default=None, help="where to write the plot (default: RUNS/data_efficiency.png)")
    args = p.parse_args()
    runs = Path(args.runs)
    results = load(runs)
    if not results:
        raise SystemExit(f"no finished runs under {runs}")
    text = table(results)
    (runs / "data_efficiency.md").write_text(text + "\n", encoding="utf-8")
    fig = plot(results, Path(args.figure) if args.figure else runs / "data_efficiency.png")
    print(text)
    print(f"\ntable: {runs / 'data_efficiency.md'}\nplot: {fig}")


if __name__ == "__main__":
    main()
