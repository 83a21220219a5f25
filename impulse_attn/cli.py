"""The ``impulse-attn`` command: ``train``, ``compare``, ``fit``, ``inspect`` and ``demo``.

Every flag shows its default in ``--help``; the training defaults are the published protocol (docs/METHOD.md,
"Training protocol"), with model-size flags so the same command runs on a CPU. Mistakes a user can fix end with one
line on stderr and exit status 2, never a traceback, and never replace files of an earlier run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
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


def _seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not seeds:
        raise argparse.ArgumentTypeError(f"{text!r} names no seed; pass e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} repeats a seed")
    return seeds


def _scale(text: str):
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or 'auto'") from None


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


def _config_from_args(args, **overrides):
    from .training.config import TrainConfig
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    values.update(overrides)
    cfg = TrainConfig(**values)
    cfg.check()
    return cfg


# --- subcommands ----------------------------------------------------------------------------------------------
def cmd_train(args) -> int:
    from .training.loop import train
    from .training.distributed import is_main_process
    cfg = _config_from_args(args)
    result = train(cfg)
    if is_main_process():  # under torchrun every rank returns the same result; one prints it
        print(f"final {result.split} accuracy {100 * result.final_acc:.2f}% (best {100 * result.best_acc:.2f}%); "
              f"metrics in {Path(cfg.out) / 'metrics.jsonl'}")
    return 0


def cmd_compare(args) -> int:
    from .training.compare import parse_variant, run_compare
    specs = args.variants or args.inits.split(",")
    variants = [parse_variant(s) for s in specs]
    base = _config_from_args(args)
    t0 = time.perf_counter()
    res = run_compare(base, variants, args.seeds, args.out, reach=args.reach, title=args.title)
    from .training.distributed import is_main_process
    if is_main_process():
        print()
        print(res.table)
        print(f"\ntable: {res.table_path}\ncurves: {res.curves_path}\n({time.perf_counter() - t0:.0f} s)")
    return 0


def cmd_fit(args) -> int:
    from .fitting import fit_impulse
    from .training.loop import check_out_dir
    from .training.metrics import write_json
    kwargs = dict(method=args.fit_method, seed=args.seed, layers=args.layers, scale=args.scale, alpha=args.alpha,
                  backend=args.fit_backend, progress=not args.no_progress, steps=args.fit_steps,
                  target=args.fit_target, target_mass=args.target_mass)
    out = Path(args.out)
    check_out_dir(out)
    try:  # fit_impulse validates every argument before any work; its messages name the argument
        fit = fit_impulse(args.num_heads, (args.grid, args.grid), args.kernel_size, args.dim, args.head_dim,
                          **kwargs)
    except (ValueError, TypeError, RuntimeError) as e:
        raise UserError(f"fit settings rejected: {e}", "change the flag it names (see impulse-attn fit --help)"
                        ) from None
    out.mkdir(parents=True, exist_ok=True)
    from .plots import plot_fit_result
    from .targets import sincos_2d
    grid = (args.grid, args.grid)
    png = plot_fit_result(fit, sincos_2d(grid, args.dim) * (1 - args.alpha), grid, out / "fit.png",
                          title=f"{args.fit_method} fit, {args.num_heads} heads, {args.grid}x{args.grid} grid, "
                                f"k={args.kernel_size}, D={args.dim}, r={args.head_dim}, scale {fit.scale:g}")
    write_json(out / "report.json", {"settings": {k: v for k, v in vars(args).items() if k != "func"},
                                     "scale": fit.scale, "offsets": fit.offsets.tolist(),
                                     "report": fit.report.as_dict()})
    print(f"impulse fit: {fit.report}")
    print(f"report: {out / 'report.json'}\nmaps vs targets: {png}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .training.loop import check_out_dir
    check_out_dir(Path(args.out))
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
    p.add_argument("--inits", default="random,mimetic,impulse", help="comma-separated inits to compare")
    p.add_argument("--variants", nargs="+", default=None, help="instead of --inits: variants as overrides of "
                   "the flags, e.g. 'init=impulse,alpha=0.1' 'frozen box:model=convmixer,filters=box,freeze=1' "
                   "(a label before ':' names it)")
    p.add_argument("--seeds", type=_seeds, default=[0], help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--reach", type=float, default=None, help="accuracy (0-1) for the 'epochs to reach' column "
                   "(default: the lowest final accuracy of the variants)")
    p.add_argument("--title", default="", help="title of the table and the plot")
    p.add_argument("--out", default="runs/compare", help="folder of the runs, results.md and curves.png")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("fit", help="the impulse fit alone: report and a PNG of maps vs targets",
                       formatter_class=_Help)
    p.add_argument("--num-heads", type=_positive_int, default=8, help="heads (one offset each)")
    p.add_argument("--grid", type=_positive_int, default=16, help="token grid side")
    p.add_argument("--kernel-size", type=int, default=5, help="window k the offsets come from")
    p.add_argument("--dim", type=int, default=512, help="model width D")
    p.add_argument("--head-dim", type=_positive_int, default=64, help="head dim r (rank of Q Kᵀ)")
    p.add_argument("--fit-method", default="closed_form", choices=_choices("fitting", "METHODS"),
                   help="fit method")
    p.add_argument("--fit-steps", type=int, default=10000, help="steps of the iterative fit")
    p.add_argument("--fit-target", default="impulse", choices=_choices("targets", "TARGET_SHAPES"),
                   help="closed-form target logits around each offset")
    p.add_argument("--fit-backend", default="auto", choices=_choices("fitting", "FIT_BACKENDS"),
                   help="iterative fit backend")
    p.add_argument("--scale", type=_scale, default=0.1, help="softmax scale s, or 'auto' (the published logit "
                   "budget at any size)")
    p.add_argument("--alpha", type=float, default=0.0, help="fit on (1−α)·P, Model I's positional part")
    p.add_argument("--target-mass", type=float, default=0.3, help="closed-form sharpness (mass on the target)")
    p.add_argument("--layers", type=_positive_int, default=1, help="independent fits (the picture shows the first)")
    p.add_argument("--seed", type=int, default=0, help="seed of the offsets and the init")
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
    p.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps per run (default: the demo's "
                   "300)")
    p.add_argument("--data-dir", default=None, help="an image folder (train/ and val/ or test/ class folders) to run "
                   "on (default: cifar10-mini next to the repository, else CIFAR-10 if it can be downloaded, else "
                   "the built-in shapes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a bad flag (already reported on one line)
        return e.code if isinstance(e.code, int) else 2
    try:
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
