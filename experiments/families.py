"""The "Every family" tables of docs/RESULTS.md from experiments/families.sh's run folders: per family and size,
final val (and test) accuracy per init, mean ± std over the seeds that have run, and each init's gain over the
family's own init paired seed by seed. Only finished runs (800 steps) count.

    python experiments/families.py [--runs runs/families]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_efficiency import _pm as fmt  # noqa: E402  (one formatter for every table)


def final(run: Path):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = rows[-1] if rows else {}
    return last if last.get("step") and last.get("lr", 1) == 0.0 else None


def collect(root: Path) -> dict:
    """{(family, size): {init: {seed: final metrics}}} over finished runs."""
    out: dict = {}
    for metrics in sorted(root.glob("*/pc*/*/seed*/metrics.jsonl")):
        run = metrics.parent
        last = final(run)
        if last is None:
            continue
        fam, size, init, seed = run.parts[-4], int(run.parts[-3][2:]), run.parts[-2], int(run.name[4:])
        out.setdefault((fam, size), {}).setdefault(init, {})[seed] = last
    return out


def table(runs: dict) -> str:
    lines = ["| family | images / class | init | seeds | val acc | test acc | gain over own init (val, paired) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for (fam, size), inits in sorted(runs.items()):
        own = inits.get("own", {})
        for init, seeds in sorted(inits.items(), key=lambda kv: (kv[0] != "own", kv[0])):
            val = [m["val_acc"] for m in seeds.values()]
            test = [m["test_acc"] for m in seeds.values() if "test_acc" in m]
            paired = [seeds[s]["val_acc"] - own[s]["val_acc"] for s in seeds if s in own]
            gain = "—" if init == "own" or not paired else (
                f"{100 * paired[0]:+.1f}" if len(paired) == 1 else
                f"{100 * statistics.fmean(paired):+.1f} ± {100 * statistics.stdev(paired):.1f}")
            lines.append(f"| {fam} | {size} | {init} | {len(seeds)} | {fmt(val)} | {fmt(test)} | {gain} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/families", help="experiments/families.sh's output folder")
    args = p.parse_args()
    print(table(collect(Path(args.runs))))


if __name__ == "__main__":
    main()
