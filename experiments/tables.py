"""Markdown tables for docs/RESULTS.md from the comparisons that experiments/run_all.sh wrote.

For every section folder with a summary.json (written by ``impulse-attn compare``): test accuracy (%) per variant
at selected epochs, mean ± std over seeds, then final and best. Usage (repository root):
    python experiments/tables.py [--runs runs/experiments] [--epochs 1,2,3,5,10]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def fmt(values) -> str:
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(summary: dict, epochs) -> str:
    head = "| variant | seeds | " + " | ".join(f"epoch {e}" for e in epochs) + " | best | init s |"
    lines = [head, "|" + " --- |" * (len(epochs) + 4)]
    for label, v in summary["variants"].items():
        curves = v["acc_by_epoch"]
        cells = [fmt([c[e] for c in curves]) if all(len(c) > e for c in curves) else "—" for e in epochs]
        init_s = statistics.fmean(s for s in v["init_seconds"] if s is not None)
        lines.append(f"| {label} | {len(curves)} | " + " | ".join(cells) + f" | {fmt(v['best_acc'])} | "
                     f"{init_s:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/experiments", help="folder of the compare outputs")
    p.add_argument("--epochs", default="1,2,3,5,10", help="epochs to show")
    args = p.parse_args()
    epochs = [int(e) for e in args.epochs.split(",")]
    for path in sorted(Path(args.runs).glob("*/summary.json")):
        summary = json.loads(path.read_text())
        print(f"### {path.parent.name}\n\n{summary['setting']}\n")
        print(table(summary, epochs))
        print()


if __name__ == "__main__":
    main()
