"""Do trained ViTs keep (or grow) convolution-like heads? ``impulse-attn inspect`` on the data-efficiency study's
runs, summarized per init and data size.

For every run folder given (default: every seed-0 run of the study), runs ``inspect_run`` (maps at init vs trained
on 64 evaluation images) and writes RUNS/maps_after_training.md (per init and size, averaged over layers and heads:
mass on the impulse target, best single-offset mass, mass in the k×k window, attention distance, how far the maps
moved) and RUNS/maps_after_training.png. Each run folder also gets its own maps.png and inspect.json.

    python experiments/maps_after_training.py [--runs runs/study] [--seeds 0]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path


def _mean(values):
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/study")
    p.add_argument("--seeds", default="0")
    p.add_argument("--images", type=int, default=64)
    args = p.parse_args()
    import torch

    from impulse_attn.training.inspect import inspect_run
    torch.set_num_threads(2)
    runs = Path(args.runs)
    seeds = {int(s) for s in args.seeds.split(",")}
    rows = []
    for run in sorted(runs.glob("pc*/*/seed*")):
        if int(run.name[4:]) not in seeds or not (run / "checkpoint.pt").is_file():
            continue
        size = int(re.fullmatch(r"pc(\d+)", run.parent.parent.name).group(1))
        if not (run / "inspect.json").is_file():
            inspect_run(run, images=args.images, log=lambda s: None)
        data = json.loads((run / "inspect.json").read_text())
        heads = data["heads"]
        row = {"size": size, "init": run.parent.name, "seed": int(run.name[4:])}
        for when in ("init", "trained"):
            for key in ("target_mass", "best_offset_mass", "local_mass", "distance"):
                row[f"{when}_{key}"] = _mean([h[when][key] for h in heads])
        row["map_change"] = _mean([h["map_change"] for h in heads])
        rows.append(row)
        print(f"{run}: best-offset mass {row['init_best_offset_mass']:.3f} -> {row['trained_best_offset_mass']:.3f},"
              f" distance {row['init_distance']:.2f} -> {row['trained_distance']:.2f}", flush=True)

    def f(v):
        return "—" if v is None else f"{v:.3f}"
    lines = ["| images / class | init | mass on impulse target (init → trained) | best single-offset mass | "
             "mass in the k×k window | attention distance (tokens) | maps moved (TV) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(rows, key=lambda r: (r["size"], r["init"])):
        lines.append(f"| {r['size']} | {r['init']} | {f(r['init_target_mass'])} → {f(r['trained_target_mass'])} | "
                     f"{f(r['init_best_offset_mass'])} → {f(r['trained_best_offset_mass'])} | "
                     f"{f(r['init_local_mass'])} → {f(r['trained_local_mass'])} | "
                     f"{f(r['init_distance'])} → {f(r['trained_distance'])} | {f(r['map_change'])} |")
    text = "\n".join(lines)
    (runs / "maps_after_training.md").write_text(text + "\n", encoding="utf-8")
    print(text)

    from impulse_attn.plots import pyplot
    plt = pyplot()
    inits = sorted({r["init"] for r in rows})
    sizes = sorted({r["size"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for ax, key, label in ((axes[0], "best_offset_mass", "best single-offset mass (convolution-likeness)"),
                           (axes[1], "distance", "mean attention distance (tokens)")):
        for init in inits:
            rs = [next((r for r in rows if r["init"] == init and r["size"] == s), None) for s in sizes]
            line, = ax.plot(sizes, [r[f"trained_{key}"] if r else float("nan") for r in rs], marker="o",
                            label=f"{init}, trained")
            ax.plot(sizes, [r[f"init_{key}"] if r else float("nan") for r in rs], ls="--", color=line.get_color(),
                    alpha=0.6)
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.minorticks_off()
        ax.set_xticklabels([str(s) for s in sizes])
        ax.set_xlabel("training images per class")
        ax.set_title(label + " (dashed: at init)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(runs / "maps_after_training.png", dpi=110)
    print(f"\ntable: {runs / 'maps_after_training.md'}\nplot: {runs / 'maps_after_training.png'}")


if __name__ == "__main__":
    main()
