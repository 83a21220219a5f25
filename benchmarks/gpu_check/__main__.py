"""``make gpu-check`` = ``python3 -m benchmarks.gpu_check``: the GPU acceptance run (docs/gpu-check.md).

Settings (environment variables; the Makefile passes them through):

    GPU_CHECK_OUT      where report.md, figures.json and gpu-check.log go (default: $OUT when set, else
                       runs/gpu-check; the dry run: runs/gpu-check-dry unless GPU_CHECK_OUT or $OUT is set)
    GPU_CHECK_STAGES   comma-separated stages (default: every GPU stage; the dry run adds selfcheck)
    GPU_CHECK_DRY_RUN  1: the same stages on the CPU with CUDA hidden (pip --dry-run, pytest --collect-only)
    GPU_CHECK_INJECT   testing hook: "STAGE=fail,STAGE=hang" replaces those stages by a child that fails or hangs
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from . import build, report
from .pytest_stage import child_pytest
from .runner import REPO, STATUSES, Context, StageResult, failed, write_atomic
from .stages import BY_NAME, STAGES, gpu_total

CHILDREN = {"environment": build.child_environment, "verify-build": build.child_verify_build}


def _truthy(text) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description="The GPU acceptance run.")
    p.add_argument("--dry-run", action="store_true", default=_truthy(os.environ.get("GPU_CHECK_DRY_RUN")))
    p.add_argument("--stages", default=os.environ.get("GPU_CHECK_STAGES", ""))
    p.add_argument("--out", default=os.environ.get("GPU_CHECK_OUT") or os.environ.get("OUT") or "")
    p.add_argument("--list", action="store_true", help="the stages and their budgets")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", default=None, help=argparse.SUPPRESS)
    p.add_argument("--events", default=None, help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _child(args) -> int:
    if args.child == "pytest":
        rest = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
        return child_pytest(Path(args.events), rest)
    data = CHILDREN[args.child](args)
    import json
    write_atomic(Path(args.result), json.dumps(data, indent=1, default=str))
    return 0


def _injected(kind: str):
    def run(ctx: Context, timeout: float) -> StageResult:
        code = ("import sys; print('injected failure'); sys.exit(7)" if kind == "fail" else
                "import time; print('injected hang', flush=True); time.sleep(3600)")
        o = ctx.run([sys.executable, "-c", code], min(timeout, 1.0) if kind == "hang" else timeout)
        return failed(o, f"injected {kind} (GPU_CHECK_INJECT)") if not o.ok else StageResult("passed", "injected")
    return run


def _parse_inject(text: str) -> dict:
    out = {}
    for item in filter(None, (s.strip() for s in (text or "").split(","))):
        name, _, kind = item.partition("=")
        if name not in BY_NAME or kind not in ("fail", "hang"):
            raise SystemExit(f"gpu_check: GPU_CHECK_INJECT item {item!r}: expected STAGE=fail or STAGE=hang")
        out[name] = kind
    return out


def stage_timeout(ctx: Context, name: str, later: list) -> float:
    """What is left of the run's budget less what the later stages keep; so time one stage saves goes to the next,
    and the run as a whole never exceeds its budget."""
    return max(0.0, ctx.budget - ctx.elapsed() - sum(BY_NAME[n].budget for n in later))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return _child(args)
    if args.list:
        for s in STAGES:
            print(f"{s.name:17s} {s.budget:4.0f} s{'' if s.gpu else '  (dry run only)'}  {s.title}")
        print(f"{'total':17s} {gpu_total():4.0f} s  (GPU stages and the start allowance)")
        return 0
    dry = args.dry_run
    names = [n.strip() for n in args.stages.split(",") if n.strip()] or [s.name for s in STAGES if s.gpu or dry]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        print(f"gpu_check: unknown stage(s) {unknown}; stages: {', '.join(BY_NAME)}", file=sys.stderr)
        return 2
    selected = [s.name for s in STAGES if s.name in names]
    out = Path(args.out or ("runs/gpu-check-dry" if dry else "runs/gpu-check"))
    out = out if out.is_absolute() else REPO / out
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(dry=dry, out=out, budget=sum(BY_NAME[n].budget for n in selected), inject=_parse_inject(
        os.environ.get("GPU_CHECK_INJECT", "")))
    (out / "gpu-check.log").write_bytes(b"")

    def record(name: str, res: StageResult, seconds: float, timeout: float) -> None:
        ctx.results[name] = dict(status=res.status, summary=res.summary, seconds=round(seconds, 1),
                                 timeout=round(timeout, 1), budget=BY_NAME[name].budget, commands=res.commands,
                                 log_tail=res.log_tail, figures=res.figures)
        report.write(ctx, selected)

    running = {}
    ctx.on_partial = lambda name, res: record(name, res, time.monotonic() - running["start"], running["timeout"])
    print(f"gpu-check{' (DRY RUN: CPU only)' if dry else ''}: {', '.join(selected)}; budget {ctx.budget:.0f} s; "
          f"report {out / 'report.md'}", flush=True)
    report.write(ctx, selected)
    try:
        for i, name in enumerate(selected):
            timeout = stage_timeout(ctx, name, selected[i + 1:])
            running.update(start=time.monotonic(), timeout=timeout)
            if timeout < 5:
                res = StageResult("not run", f"no time left in the {ctx.budget:.0f} s budget")
            else:
                fn = _injected(ctx.inject[name]) if name in ctx.inject else BY_NAME[name].run
                print(f"[{name}] running (timeout {timeout:.0f} s) ...", flush=True)
                try:
                    res = fn(ctx, timeout)
                except Exception as e:  # a bug in one stage must not stop the others
                    res = StageResult("error", f"{type(e).__name__}: {e}", log_tail=traceback.format_exc())
            if res.status not in STATUSES:
                res.status = "error"
            record(name, res, time.monotonic() - running["start"], timeout)
            print(f"[{name}] {res.status} in {time.monotonic() - running['start']:.0f} s: {res.summary}", flush=True)
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    bad = [n for n in selected if ctx.results[n]["status"] != "passed"]
    print(f"gpu-check: {'all stages passed' if not bad else 'not passed: ' + ', '.join(bad)} in "
          f"{ctx.elapsed():.0f} s; report: {out / 'report.md'}", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
