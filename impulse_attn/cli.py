"""The ``impulse-attn`` command: ``train``, ``compare``, ``fit``, ``inspect`` and ``demo``.

Every flag shows its default in ``--help``; the training defaults are the published protocol (docs/METHOD.md,
"Training protocol"), with model-size flags so the same command runs on a CPU. Mistakes a user can fix end with one
line on stderr and exit status 2, never a traceback, and never replace files of an earlier run.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import List, Optional

from .training.errors import TrainingDiverged, UserError

PROG = "impulse-attn"
DEMO_DEFAULT_OUT = "runs/demo"


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag on one line (no usage block) with exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to every flag's help, unless the help already says what the default means."""

    def _get_help_string(self, action):
        if "(default:" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _bounded_steps(text: str) -> int:
    from .training.config import MAX_STEPS
    v = _positive_int(text)
    if v > MAX_STEPS:
        raise argparse.ArgumentTypeError(f"{text} must be at most {MAX_STEPS}")
    return v


def _seeds(text: str) -> List[int]:
    from .training.config import MAX_SEED
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed; pass e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise argparse.ArgumentTypeError(f"seed {bad[0]} is not an integer in [0, 2**63 - 1]")
    return seeds


def _accuracy(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = math.nan
    if not (math.isfinite(v) and 0 <= v <= 1):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1] (an accuracy, e.g. 0.5)")
    return v


def _scale(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None


def _check_out(out, flag: str = "--out"):
    from .training.config import check_out_path
    return check_out_path(out, flag)


# --- the training flags, shared by train and compare: generated from TrainConfig's fields ---------------------
def _field_type(f):
    from .training.config import parse_value

    def parse(text: str):
        try:
            return parse_value(f, text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    parse.__name__ = f.name  # argparse names the type in its error message
    return parse


def _add_training_flags(p: argparse.ArgumentParser, skip=()) -> None:
    from .training.config import TrainConfig, field_kind, flag_name
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        meta = f.metadata
        g = groups.get(meta["group"]) or groups.setdefault(meta["group"], p.add_argument_group(meta["group"]))
        shown = meta["none_means"] if f.default is None else f.default
        if field_kind(f) == "bool":
            action = "store_false" if f.default else "store_true"
            g.add_argument(flag_name(f), dest=f.name, action=action, default=f.default,
                           help=f"{meta['help']} (default: {'on' if f.default else 'off'})")
            continue
        kwargs = dict(dest=f.name, default=f.default, help=f"{meta['help']} (default: {shown})")
        if meta["choices"] is not None:
            kwargs["choices"] = tuple(meta["choices"]())
        else:
            kwargs["type"] = _field_type(f)
        g.add_argument(flag_name(f), **kwargs)


def _config_from_args(args, applicability: str = "refuse", **overrides):
    """The TrainConfig of the flags, checked; a flag the chosen model, init or recipe does not use is refused
    (``compare`` passes "skip" and decides over its variants)."""
    from .training.config import TrainConfig
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    cfg = TrainConfig(**values)
    cfg.check(applicability)
    return cfg


# --- subcommands ----------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .training.loop import train
    from .training.distributed import is_main_process
    cfg = _config_from_args(args)
    _check_out(cfg.out)
    result = train(cfg)
    if is_main_process():  # under torchrun every rank returns the same result; one prints it
        print(f"final {result.split} accuracy {100 * result.final_acc:.2f}% (best {100 * result.best_acc:.2f}%); "
              f"metrics in {Path(cfg.out) / 'metrics.jsonl'}")
    return 0


def cmd_compare(args) -> int:
    from .training.compare import parse_variant, run_compare
    if args.variants and args.inits is not None:
        raise UserError("--inits and --variants both say what to compare (only --variants would run)",
                        "give one of them, e.g. --variants random impulse 'impulse_m0.3:init=impulse,target_mass=0.3'")
    specs = args.variants or (args.inits or "random,mimetic,impulse").split(",")
    variants = [parse_variant(s) for s in specs]
    base = _config_from_args(args, applicability="skip")  # run_compare checks what applies, variant by variant
    _check_out(args.out)
    t0 = time.perf_counter()
    res = run_compare(base, variants, args.seeds, args.out, reach=args.reach, title=args.title)
    from .training.distributed import is_main_process
    if is_main_process():
        print()
        print(res.table)
        print(f"\ntable: {res.table_path}\ncurves: {res.curves_path}\n({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_fit(args) -> int:
    from .fitting.spec import cli_fields, flag_of
    from .training.metrics import write_json
    full = _fit_arguments(args)
    out = _check_out(args.out)

    def rejected(e: Exception) -> UserError:
        text = str(e)  # fit_impulse's messages name the arguments ("dim 7", "steps must ..."): name the flags
        for f in cli_fields():
            text = re.sub(rf"(?<![\w-]){f.name}(?=( must| [-\d(]|:))", flag_of(f), text)
        return UserError(f"fit settings rejected: {text}", "change the flag it names (see impulse-attn fit --help)")
    import inspect
    from .fitting import api
    from .fitting.spec import make_spec
    try:  # every argument, validated once before any work; the fit then runs that spec
        spec = make_spec(**{k: full[k] for k in inspect.signature(make_spec).parameters})
        result = api.run_fit(spec, warn=full["warn"], progress=not args.no_progress)
    except (ValueError, TypeError, RuntimeError) as e:
        raise rejected(e) from None
    out.mkdir(parents=True, exist_ok=True)
    from .plots import plot_fit_result
    from .targets import sincos_2d
    grid = (args.grid_size, args.grid_size)
    png = plot_fit_result(result, sincos_2d(grid, args.dim) * (1 - args.alpha), grid, out / "fit.png",
                          title=f"{args.fit_method} fit, {args.num_heads} heads, {args.grid_size}x{args.grid_size} "
                                f"grid, k={args.kernel_size}, D={args.dim}, r={args.head_dim}, scale {result.scale:g}")
    write_json(out / "report.json", {"settings": {k: v for k, v in vars(args).items() if k != "func"},
                                     "scale": result.scale, "offsets": result.offsets.tolist(),
                                     "report": result.report.as_dict()})
    print(f"impulse fit: {result.report}")
    print(f"report: {out / 'report.json'}\nmaps vs targets: {png}")
    return 0


def _fit_arguments(args) -> dict:
    """Every ``fit_impulse`` argument: the default model's (``fit_defaults``) with the fit flags the fit method uses
    on top; a flag given (not at its default) for a fit method that does not use it is refused."""
    from .fitting.spec import cli_fields, flag_of
    from .training.config import fit_defaults
    defaults = fit_defaults()
    given = {f.name: getattr(args, f.name) for f in cli_fields()}
    unused = [flag_of(f) for f in cli_fields() if args.fit_method not in f.metadata["fit_methods"]
              and given[f.name] != defaults[f.name]]
    if unused:
        raise UserError(f"{' '.join(unused)} {'does' if len(unused) == 1 else 'do'} not apply to --fit-method "
                        f"{args.fit_method}", "drop it, or choose the fit method that uses it")
    if given.get("logit_scale") is not None and given["target_mass"] != defaults["target_mass"]:
        raise UserError("--logit-scale sets the closed form's sharpness directly; --target-mass calibrates it to a "
                        "mass (the logit scale wins)", "give one of them")
    return {**defaults, **{f.name: given[f.name] for f in cli_fields() if args.fit_method in f.metadata["fit_methods"]}}


def _fit_value(kind: str, name: str):
    def parse(text: str):
        if kind == "scale":
            return _scale(text)
        if kind == "optional_float" and text.strip().lower() in ("none", "null"):
            return None
        try:
            return int(text) if kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind == 'int' else 'a number'}"
                                             ) from None
    parse.__name__ = name
    return parse


def _add_fit_flags(p: argparse.ArgumentParser) -> None:
    """The fit flags, generated from FitSpec's fields; defaults are a default model's (``config.fit_defaults``)."""
    from .fitting.spec import cli_fields, flag_of
    from .training.config import fit_defaults
    defaults = fit_defaults()
    for f in cli_fields():
        meta, default = f.metadata, defaults[f.name]
        fit_methods = meta["fit_methods"]
        only = ("" if set(fit_methods) == set(_choices("fitting", "FIT_METHODS"))
                else f" [--fit-method {fit_methods[0]}]")
        shown = "none" if default is None else default
        if meta["kind"] == "bool":
            p.add_argument(flag_of(f), dest=f.name, action="store_false" if default else "store_true",
                           default=default, help=f"{meta['help']}{only} (default: {'on' if default else 'off'})")
            continue
        kwargs = dict(dest=f.name, default=default, help=f"{meta['help']}{only} (default: {shown})")
        if meta["choices"] is not None:
            kwargs["choices"] = tuple(meta["choices"]())
        else:
            kwargs["type"] = _fit_value(meta["kind"], flag_of(f).lstrip("-"))
        p.add_argument(flag_of(f), **kwargs)


def cmd_demo(args) -> int:
    from .demo import run_demo
    _check_out(args.out)
    run_demo(args.out, seeds=args.seeds, progress=not args.no_progress, steps=args.steps, data_dir=args.data_dir)
    return 0


def _choices(module: str, name: str) -> tuple:
    """A choice list from the module that owns it."""
    import importlib
    return tuple(getattr(importlib.import_module(f"impulse_attn.{module}"), name))


def _query(text: str) -> tuple:
    try:
        r, c = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token position 'row,col'") from None
    return r, c


def cmd_inspect(args) -> int:
    from .training.inspect import inspect_run
    if args.out is not None:
        _check_out(args.out)
    inspect_run(args.run, images=args.images, query=args.query, out=args.out)
    return 0


def _subcommand(sub, name: str, help: str, description: str = "") -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=description or None, formatter_class=_Help)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, formatter_class=_Help, description=(
        "Impulse (convolutional) initialization of attention for data-efficient vision transformers.\n"
        "Start with `impulse-attn demo`."))
    from . import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,fit,inspect,demo}", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("train", help="one training run", formatter_class=_Help,
                       description="Train one model. Defaults are the published protocol (Simple ViT 512x6, "
                                   "8 heads, patch 2, Adam 1e-4, cosine, 200 epochs, batch 512); scale it down "
                                   "with --dim/--depth/--num-heads/--head-dim/--mlp-dim/--epochs.")
    _add_training_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("compare", help="several inits on the same data, seeds and budget", formatter_class=_Help,
                       description="Train several variants with the same settings and seeds; write a markdown "
                                   "table and a PNG of the accuracy curves. Runs already in --out are resumed "
                                   "or reused.")
    _add_training_flags(p, skip=("out", "resume"))
    p.add_argument("--inits", default=None, help="comma-separated inits to compare (default: random,mimetic,impulse)")
    p.add_argument("--variants", nargs="+", default=None, help="instead of --inits: variants as overrides of "
                   "the flags, e.g. 'init=impulse,alpha=0.1' 'frozen box:model=convmixer,filters=box,freeze=1' "
                   "(a label before ':' names it)")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--reach", type=_accuracy, default=None, help="accuracy (0-1) for the 'epochs to reach' column "
                   "(default: the lowest final accuracy of the variants)")
    p.add_argument("--title", default="", help="title of the table and the plot")
    p.add_argument("--out", default="runs/compare", help="folder of the runs, results.md and curves.png")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("fit", help="the impulse fit alone: report and a PNG of maps vs targets",
                       formatter_class=_Help,
                       description="Fit query/key weights to impulse maps as a model's impulse init does; the "
                                   "defaults are a default model's (the Simple ViT of the published protocol: 8 "
                                   "heads, 16x16 grid, k=5, D=512, r=64, 6 layers, alpha 0.2, the closed form). A "
                                   "flag of the other fit method is refused.")
    _add_fit_flags(p)
    p.add_argument("--out", default="runs/fit", help="folder for report.json and fit.png")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)

    p = _subcommand(sub, "inspect", "a trained ViT's attention maps next to its maps at init",
                    description="Draw a trained run's attention maps for one query token next to the same "
                                "model's maps at init, and report per layer and head how convolution-like they are "
                                "(mass on the impulse target, best single offset) and how far they moved.")
    p.add_argument("run", help="the --out folder of a finished or interrupted `impulse-attn train` run")
    p.add_argument("--images", type=_positive_int, default=64, help="evaluation images the maps are averaged over")
    p.add_argument("--query", type=_query, default=None, help="query token 'row,col' to draw (default: the grid "
                   "centre)")
    p.add_argument("--out", default=None, help="where inspect.json and maps.png go (default: the run folder)")
    p.set_defaults(func=cmd_inspect)

    p = _subcommand(sub, "demo", "what the package does, on real images when it can, in about four CPU minutes",
                    description="The fitted maps of the impulse init; random vs impulse init of a small "
                                "ViT with little data and many epochs on real images (two seeds); the closed-form "
                                "fit's speed at the paper's size.")
    p.add_argument("--out", default=DEMO_DEFAULT_OUT, help="folder of the runs, the table and the pictures")
    p.add_argument("--seeds", type=_seeds, default=[0, 1], help="comma-separated seeds")
    p.add_argument("--steps", type=_bounded_steps, default=None, help="optimizer steps per run, at most 10000000 "
                   "(default: the demo's 300)")
    p.add_argument("--data-dir", default=None, help="an image folder (train/ and val/ or test/ class folders) to run "
                   "on (default: cifar10-mini next to the repository, else CIFAR-10 if it can be downloaded, else "
                   "the built-in shapes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad flag (already reported on one line)
        return e.code if isinstance(e.code, int) else 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return args.func(args)
    except UserError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"{PROG} {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted (a run continues with --resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
