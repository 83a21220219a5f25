"""Markdown table of experiments/init_mechanism.py's results (runs/mechanism/results.jsonl): val accuracy (%) at
selected epochs and at the end, mean ± std over the seeds each variant has, and the init's weights.

    python experiments/mechanism_table.py [--results runs/mechanism/results.jsonl]
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="runs/mechanism/results.jsonl")
    p.add_argument("--epochs", default="1,3,5,10")
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


if __name__ == "__main__":
    main()
