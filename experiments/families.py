"""The "Every family" tables of docs/RESULTS.md from experiments/families.sh's run folders: per family and size,
final val (and test) accuracy per init, mean ± std over the seeds that have run, and each init's gain over the
family's own init ("own") paired seed by seed. Finished runs only (each run's summary.json), read by the
data-efficiency study's own collector.

    python experiments/families.py [--runs runs/families] [--sweeps]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_efficiency import _pm as fmt, load  # noqa: E402  (one reader and formatter for every table)


#: the grid's inits; the default sweep's runs (impulse_m0.3, impulse_g2, ...) are left out unless asked for
GRID_INITS = ("own", "impulse", "mimetic")


def table(root: Path, sweeps: bool = False) -> str:
    lines = ["| family | images / class | init | seeds | val acc | test acc | gain over own init (val, paired) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for fam_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for size, inits in sorted(load(fam_dir).items()):
            own = inits.get("own", {})
            for init, seeds in sorted(inits.items(), key=lambda kv: (kv[0] != "own", kv[0])):
                if not seeds or not (sweeps or init in GRID_INITS):
                    continue
                paired = [seeds[s]["val"] - own[s]["val"] for s in seeds if s in own]
                gain = "—" if init == "own" or not paired else (
                    f"{100 * paired[0]:+.1f}" if len(paired) == 1 else
                    f"{100 * statistics.fmean(paired):+.1f} ± {100 * statistics.stdev(paired):.1f}")
                lines.append(f"| {fam_dir.name} | {size} | {init} | {len(seeds)} | "
                             f"{fmt([r['val'] for r in seeds.values()])} | "
                             f"{fmt([r['test'] for r in seeds.values() if r['test'] is not None])} | {gain} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/families", help="experiments/families.sh's output folder")
    p.add_argument("--sweeps", action="store_true", help="also the default sweep's runs (SWEEP=1)")
    args = p.parse_args()
    print(table(Path(args.runs), sweeps=args.sweeps))


if __name__ == "__main__":
    main()
