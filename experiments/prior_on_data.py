"""The "prior on data" tables and figure of docs/RESULTS.md, from experiments/prior_on_data.sh's run folders.

Per family, width and size (``wide/``'s runs, WIDER=1, as "<family> (wider)"): each init's final val (and test)
accuracy, mean ± std over the seeds that have run, its gain over the family's own init paired seed by seed, and
the prior it started with on the run's own training images (``summary.json``'s ``init.on_data``: argmax on the
offset, mass on the target, position share, means over layers and seeds). Then how the gain follows the prior: every impulse-type run's paired gain against its on-data
argmax hit and position share, with their correlation (``--figure`` draws it).

    python experiments/prior_on_data.py [--runs runs/prior] [--figure docs/figures/prior_on_data.png]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_efficiency import _pm as fmt, load  # noqa: E402  (one reader and formatter for every table)

FIGURES = ("argmax_hit", "target_mass", "position_share", "bias_share")


def prior(run_dir: Path) -> dict:
    """{seed: the run's mean on-data figures at init} for one variant folder."""
    out = {}
    for path in sorted(run_dir.glob("seed*/summary.json")):
        init = json.loads(path.read_text()).get("init", {})
        out[int(path.parent.name[4:])] = (init.get("on_data") or {}).get("mean", {})
    return out


def collect(root: Path) -> list:
    """One row per (family, width, size, init): accuracies per seed and the prior per seed."""
    from impulse_attn.training.compare import slug
    rows = []
    families = [(p.name, p) for p in root.iterdir() if p.is_dir() and p.name != "wide"]
    families += [(f"{p.name} (wider)", p) for p in (root / "wide").glob("*") if p.is_dir()]   # WIDER=1's runs
    for name, fam_dir in sorted(families):
        for width_dir in sorted(fam_dir.glob("d*")) or [fam_dir]:
            m = re.fullmatch(r"d(\d+)", width_dir.name)
            width = int(m.group(1)) if m else None
            for size, inits in sorted(load(width_dir).items()):
                own = inits.get("own", {})
                for init, seeds in inits.items():
                    if not seeds:
                        continue
                    rows.append({"family": name, "width": width, "size": size, "init": init,
                                 "runs": seeds, "own": own,
                                 "prior": prior(width_dir / f"pc{size}" / slug(init))})
    return rows


def _mean_prior(row: dict, key: str) -> str:
    vals = [p[key] for p in row["prior"].values() if p.get(key) is not None]
    return f"{statistics.fmean(vals):.2f}" if vals else "—"


def _gain(row: dict) -> str:
    paired = [row["runs"][s]["val"] - row["own"][s]["val"] for s in row["runs"] if s in row["own"]]
    if row["init"] == "own" or not paired:
        return "—"
    if len(paired) == 1:
        return f"{100 * paired[0]:+.1f}"
    return f"{100 * statistics.fmean(paired):+.1f} ± {100 * statistics.stdev(paired):.1f}"


def table(rows: list) -> str:
    lines = ["| family | width | images / class | init | seeds | on-data hit | mass | position (bias) share | "
             "val acc | test acc | gain over own (val, paired) |", "| --- |" * 1 + " --- |" * 10]
    for r in sorted(rows, key=lambda r: (r["family"], r["width"] or 0, r["size"], r["init"] != "own", r["init"])):
        share = _mean_prior(r, "position_share")
        share = share if share != "—" else _mean_prior(r, "bias_share")
        lines.append(f"| {r['family']} | {r['width'] or '—'} | {r['size']} | {r['init']} | {len(r['runs'])} | "
                     f"{_mean_prior(r, 'argmax_hit')} | {_mean_prior(r, 'target_mass')} | {share} | "
                     f"{fmt([v['val'] for v in r['runs'].values()])} | "
                     f"{fmt([v['test'] for v in r['runs'].values() if v['test'] is not None])} | {_gain(r)} |")
    return "\n".join(lines)


def _label(row: dict) -> str:
    width = f" d{row['width']}" if row["width"] else ""
    return f"{row['family']}{width} pc{row['size']} {row['init']}"


def pairs(rows: list) -> list:
    """(on-data hit, position share, paired gain in points, label) per impulse-type run with an own-init twin."""
    out = []
    for r in rows:
        for seed, run in r["runs"].items():
            p = r["prior"].get(seed, {})
            if r["init"] == "own" or seed not in r["own"] or p.get("argmax_hit") is None:
                continue
            out.append((p["argmax_hit"], p.get("position_share"), 100 * (run["val"] - r["own"][seed]["val"]),
                        _label(r)))
    return out


def correlation(xs, ys) -> float:
    return statistics.correlation(xs, ys) if len(xs) > 2 and len(set(xs)) > 1 else float("nan")


def relation(rows: list) -> str:
    ps = pairs(rows)
    if not ps:
        return "no impulse-type runs with an own-init twin yet"
    hit = correlation([p[0] for p in ps], [p[2] for p in ps])
    with_share = [p for p in ps if p[1] is not None]
    share = correlation([p[1] for p in with_share], [p[2] for p in with_share])
    return (f"{len(ps)} paired runs: correlation of the gain over own init with the on-data argmax hit "
            f"{hit:+.2f}, with the position share {share:+.2f}")


def figure(rows: list, path: Path) -> Path:
    from impulse_attn.plots import pyplot, save_figure
    plt = pyplot()
    ps = pairs(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    groups = sorted({p[3] for p in ps})
    colors = plt.get_cmap("tab20")
    for k, g in enumerate(groups):
        sel = [p for p in ps if p[3] == g]
        for ax, i in zip(axes, (0, 1)):
            ax.scatter([p[i] for p in sel if p[i] is not None], [p[2] for p in sel if p[i] is not None], s=18,
                       label=g, color=colors(k % 20), marker="os^D"[k // 20 % 4])
    for ax, name in zip(axes, ("argmax on the offset, on the run's training images at init",
                               "position share of the query/key input at init")):
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(name, fontsize=8)
        ax.set_ylabel("final val gain over the family's own init (points)", fontsize=8)
    axes[1].legend(fontsize=5, ncol=2)
    fig.suptitle(relation(rows), fontsize=8)
    return save_figure(fig, path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/prior", help="experiments/prior_on_data.sh's output folder")
    p.add_argument("--figure", default=None, help="also draw gain against the prior to this PNG")
    args = p.parse_args()
    rows = collect(Path(args.runs))
    print(table(rows))
    print()
    print(relation(rows))
    if args.figure:
        print(figure(rows, Path(args.figure)))


if __name__ == "__main__":
    main()
