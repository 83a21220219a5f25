"""Several variants (inits, α, filter banks, ...) on the same data, seeds and budget, and their table.

A variant is a set of overrides of the base ``TrainConfig``: ``"impulse"`` is short for ``init=impulse``,
``"init=impulse,alpha=0.1"`` sets two fields, ``"frozen impulse:filters=impulse,freeze=true"`` gives a label.
Every run lives in ``OUT/<label>/seed<k>`` and is resumed or reused when it is already there, so an interrupted
comparison continues where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from .config import TrainConfig, fields_by_name, flag_name, parse_value
from . import distributed
from .errors import UserError
from .loop import TrainResult, resolve_device, train
from .metrics import write_json

_NOT_VARIED = ("out", "resume", "seed", "progress")


@dataclass
class Variant:
    label: str
    overrides: Dict[str, object]


def parse_variant(spec: str) -> Variant:
    """``"impulse"``, ``"init=impulse,alpha=0.1"`` or ``"label:init=impulse,alpha=0.1"`` (a value may hold a colon
    itself, as in ``"model=timm:vit_tiny_patch16_224"``: a label is what precedes the first colon when it holds no
    ``=``)."""
    spec = spec.strip()
    label = None
    if ":" in spec and "=" not in spec.split(":", 1)[0]:
        label, spec = (s.strip() for s in spec.split(":", 1))
    overrides: Dict[str, object] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" not in part:
            overrides["init"] = part
            continue
        key, value = (s.strip() for s in part.split("=", 1))
        key = key.replace("-", "_")
        known = fields_by_name()
        if key not in known or key in _NOT_VARIED:
            raise UserError(f"variant {spec!r} sets unknown or fixed field {key!r}",
                            "use train option names such as init, alpha, filters, freeze, patch_size")
        try:
            overrides[key] = parse_value(known[key], value)
        except ValueError as e:
            raise UserError(f"variant value {key}={value!r} is not valid ({e})", "fix the variant") from None
    if not overrides:
        raise UserError(f"empty variant {spec!r}", "name an init such as impulse, or key=value overrides")
    if label is None:
        label = spec if set(overrides) != {"init"} else str(overrides["init"])
    return Variant(label, overrides)


def _quiet(_msg: str) -> None:
    pass


def slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label).strip("_") or "variant"


def mean_std(values: Sequence[float]) -> tuple:
    values = list(values)
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def epochs_to_reach(result: TrainResult, acc: float) -> Optional[int]:
    """The first evaluated epoch at which the selection split's accuracy reaches ``acc``."""
    return next((e for e, a in result.accuracies() if e > 0 and a >= acc), None)


def _check_existing(cfg: TrainConfig) -> None:
    """Refuse up front (not after hours of other runs) a run folder that holds a run with other settings."""
    info = Path(cfg.out) / "run.json"
    if not info.is_file():
        return
    try:
        saved = TrainConfig.from_dict(json.loads(info.read_text())["config"])
    except (ValueError, KeyError, TypeError, UserError):
        return  # unreadable: train() decides from the checkpoint itself
    diff = cfg.differences(saved)
    if diff:
        listed = "; ".join(f"{k}: there {b!r}, now {a!r}" for k, (a, b) in sorted(diff.items()))
        raise UserError(f"{cfg.out} holds a run with other settings ({listed})",
                        "use another --out for a comparison with new settings")


def _check_applicable(base: TrainConfig, variants: Sequence[Variant], configs: Dict[str, TrainConfig]) -> None:
    """A setting a variant gives that its own model, init or recipe does not use is refused; so is a setting of the
    base flags that no variant uses (one that some variants use, e.g. --fit-method iterative in a comparison of
    random and impulse init, is what a comparison is for)."""
    unused_by = {}
    for v in variants:
        for problem in configs[v.label].not_applicable():
            mine = [f for f in problem.fields if f in v.overrides]
            if mine:
                raise UserError(f"variant {v.label!r}: {problem.message}", "drop it from the variant")
            for f in problem.fields:
                unused_by.setdefault(f, []).append(problem)
    for f, problems in unused_by.items():
        if len(problems) == len(variants):
            flag = flag_name(fields_by_name()[f])
            raise UserError(f"{flag} does not apply to any variant ({problems[0].message})",
                            "drop it, or add a variant that uses it")


@dataclass
class CompareResult:
    out: Path
    runs: Dict[str, List[TrainResult]]
    reach: float
    table: str
    table_path: Path
    curves_path: Optional[Path] = None


def summarize(runs: Dict[str, List[TrainResult]], reach: Optional[float] = None) -> tuple:
    """The markdown table (accuracies in %, mean ± std over seeds) and the reach accuracy used."""
    finals = {label: mean_std(r.final_acc for r in rs)[0] for label, rs in runs.items()}
    if reach is None:  # the accuracy every variant ends above: who gets there first?
        reach = math.floor(100 * min(finals.values())) / 100
    any_run = next(iter(runs.values()))[0]
    split = any_run.split
    also_test = split != "test" and any_run.final("test") is not None
    first_epoch = min((e for e, _ in any_run.accuracies() if e > 0), default=1)
    head = (f"| variant | seeds | epoch {first_epoch} {split} acc | final {split} acc | best {split} acc | "
            f"epochs to {100 * reach:.0f}% |" + (" final test acc |" if also_test else "") + " init s |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for label, rs in runs.items():
        def pm(vals):
            m, s = mean_std([100 * v for v in vals])
            return f"{m:.1f} ± {s:.1f}" if len(rs) > 1 else f"{m:.1f}"
        first = [dict(r.accuracies()).get(first_epoch, float("nan")) for r in rs]
        reached = [epochs_to_reach(r, reach) for r in rs]
        got = [e for e in reached if e is not None]
        reach_txt = "not reached" if not got else f"{statistics.fmean(got):.1f}"
        if got and len(got) < len(rs):
            reach_txt += f" ({len(got)}/{len(rs)} seeds)"
        init_s = statistics.fmean(r.init.get("init_seconds", float("nan")) for r in rs)
        test_txt = f" {pm([r.final('test') for r in rs])} |" if also_test else ""
        lines.append(f"| {label} | {len(rs)} | {pm(first)} | {pm([r.final_acc for r in rs])} | "
                     f"{pm([r.best_acc for r in rs])} | {reach_txt} |{test_txt} {init_s:.2f} |")
    return "\n".join(lines), reach


def run_compare(base: TrainConfig, variants: Sequence[Variant], seeds: Sequence[int], out, *,
                reach: Optional[float] = None, title: str = "", log: Callable[[str], None] = print,
                plot: bool = True) -> CompareResult:
    """Train every variant for every seed (resuming or reusing runs already in ``out``), then write
    ``out/results.md`` (table), ``out/summary.json`` and ``out/curves.png``."""
    out = Path(out)
    labels = [v.label for v in variants]
    if len(set(map(slug, labels))) != len(labels):
        raise UserError(f"variant labels {labels} are not distinct",
                        "give each variant its own label (label:key=value,...)")
    configs = {}
    for v in variants:  # check every config before the first (long) run starts
        for seed in seeds:
            cfg = dataclasses.replace(base, **v.overrides, seed=seed, resume=True,
                                      out=str(out / slug(v.label) / f"seed{seed}"))
            cfg.check("skip")
            configs[(v.label, seed)] = cfg
    _check_applicable(base, variants, {v.label: configs[(v.label, seeds[0])] for v in variants})
    dist = distributed.setup(resolve_device(base.device).type)  # under torchrun: join the process group now
    dist.decide(lambda: [_check_existing(cfg) for cfg in configs.values()])  # rank 0 reads the run folders
    runs: Dict[str, List[TrainResult]] = {v.label: [] for v in variants}
    total = len(configs)
    if not dist.is_main:
        log = _quiet
    for i, ((label, seed), cfg) in enumerate(configs.items(), 1):
        log(f"[{i}/{total}] {label}, seed {seed} -> {cfg.out}")
        runs[label].append(train(cfg, log=lambda s: log("    " + s), start_if_missing=True))
    table, reach = summarize(runs, reach)
    table_path = out / "results.md"
    c = base.resolved()
    sizes = {k: getattr(c, k) for k in ("dim", "depth", "num_heads", "head_dim", "mlp_dim", "kernel_size")
             if k in c.source.flags and getattr(c, k) is not None}
    model_text = f", {c.model}" + (" " + " ".join(f"{k} {v}" for k, v in sizes.items()) if sizes else "")
    trained = runs[next(iter(runs))][0].history[-1].get("epoch", c.epochs) if runs else c.epochs
    budget = f"{c.steps} steps ({trained} epochs)" if c.steps else f"{c.epochs} epochs"
    setting = (f"{c.dataset}" + (f" ({c.per_class}/class)" if c.per_class else "") + model_text
               + f", patch {c.patch_size}, {budget}, batch {c.batch_size}, {c.optimizer} lr {c.lr:g}, "
               f"seeds {list(seeds)}")
    if not dist.is_main:  # under torchrun every rank trained; rank 0 writes the table and the pictures
        return CompareResult(out, runs, reach, table, table_path, None)
    out.mkdir(parents=True, exist_ok=True)
    curves_path = None
    if plot:
        from ..plots import plot_curves
        curves_path = plot_curves({label: [r.history for r in rs] for label, rs in runs.items()},
                                  out / "curves.png", title=title or setting, reach=reach,
                                  split=next(iter(runs.values()))[0].split)
    text = f"# {title or 'comparison'}\n\n{setting}\n\n{table}\n"
    if curves_path:
        text += "\n![accuracy curves](curves.png)\n"
    table_path.write_text(text, encoding="utf-8")
    write_json(out / "summary.json", {
        "setting": setting, "reach": reach,
        "variants": {label: {"overrides": next(v.overrides for v in variants if v.label == label),
                             "seeds": [r.history[-1] | {"seed": s} for r, s in zip(rs, seeds)],
                             "split": rs[0].split,
                             "final_acc": [r.final_acc for r in rs], "best_acc": [r.best_acc for r in rs],
                             "final_test_acc": [r.final("test") for r in rs],
                             "acc_by_epoch": [[a for _, a in r.accuracies()] for r in rs],
                             "evaluated_epochs": [e for e, _ in rs[0].accuracies()],
                             "init_seconds": [r.init.get("init_seconds") for r in rs]}
                     for label, rs in runs.items()}})
    return CompareResult(out, runs, reach, table, table_path, curves_path)
