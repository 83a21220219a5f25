"""Stages that are pytest runs: the child runs pytest with a recorder plugin that writes one JSON line per event,
flushed at once, so a stage ended by its timeout (or a run killed from outside) still has the outcome of every
test that finished, the one that was running, and those that never started. While the child runs, the runner
turns that stream into the stage's partial result every few seconds and rewrites the report with it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from .runner import REPO, Context, Outcome, StageResult, read_json, write_atomic

KEYS_ENV = "GPU_CHECK_KEYS"   # the child's file of Triton keys compiled by earlier stages (the on-disk cache)

def summarize_events(path: Path, collect_only: bool = False) -> dict:
    """Per-test outcomes from the recorder's JSON lines (see _recorder): what finished, what was running when the
    stage ended, what never started (or, with ``collect_only``, what was collected)."""
    tests: Dict[str, dict] = {}
    collected: List[str] = []
    collect_errors, collect_skips, benchmarks = [], [], {}
    finished = False
    plan = None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        lines = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        kind, nodeid = ev.get("event"), ev.get("nodeid", "")
        if kind == "collected":
            collected = ev["nodeids"]
            for nid in collected:
                tests.setdefault(nid, dict(nodeid=nid, outcome="collected" if collect_only else "not run",
                                           seconds=0.0))
        elif kind == "collect-error":
            collect_errors.append(dict(nodeid=nodeid, text=ev.get("text", "")))
        elif kind == "collect-skip":
            collect_skips.append(dict(nodeid=nodeid, reason=ev.get("reason", "")))
        elif kind == "start":
            tests.setdefault(nodeid, dict(nodeid=nodeid, seconds=0.0))["outcome"] = "running"
        elif kind == "benchmark":
            benchmarks[nodeid] = dict(extra_info=ev.get("extra_info", {}), stats=ev.get("stats", {}))
        elif kind == "report":
            t = tests.setdefault(nodeid, dict(nodeid=nodeid, seconds=0.0, outcome="running"))
            t["seconds"] = t.get("seconds", 0.0) + float(ev.get("duration", 0.0))
            when, outcome = ev.get("when"), ev.get("outcome")
            if outcome == "failed":
                t["outcome"] = "failed" if when == "call" else "error"
                t["detail"] = ev.get("text", "")
            elif outcome == "skipped":
                t["outcome"] = "xfailed" if ev.get("xfail") is not None else "skipped"
                t["detail"] = ev.get("reason", "") or ev.get("xfail", "")
            elif when == "call" and t.get("outcome") == "running":
                t["outcome"] = "passed"
            elif when == "teardown" and t.get("outcome") == "running":  # passed setup, no call: should not happen
                t["outcome"] = "passed"
        elif kind == "plan":
            plan = {k: v for k, v in ev.items() if k != "event"}
        elif kind == "finish":
            finished = True
    counts: Dict[str, int] = {}
    for t in tests.values():
        if t["outcome"] == "running" and finished:
            t["outcome"] = "error"
        if t["outcome"] == "running":
            t["outcome"] = "timeout"  # it was running when the stage was killed
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return dict(tests=list(tests.values()), counts=counts, collected=len(collected), finished=finished,
                collect_errors=collect_errors, collect_skips=collect_skips, benchmarks=benchmarks, plan=plan)


def compile_plan(items) -> dict:
    """The collected tests' compiles (compiles.py) on top of the keys earlier stages compiled (file $GPU_CHECK_KEYS):
    the plan's summary, the keys this stage adds, and the tests that declare nothing. Never raises: a plan that
    cannot be made is reported, and the tests still run."""
    import os
    try:
        from . import compiles
        path = os.environ.get(KEYS_ENV)
        cached = set(read_json(Path(path)) or []) if path else set()
        proc, errors = compiles.plan_items(items, cached)
        return dict(summary=proc.summary(), new_keys=proc.new, errors=errors)
    except Exception as e:  # noqa: BLE001 - reported in the stage's figures instead
        return dict(error=f"{type(e).__name__}: {e}")



def _count_text(counts: dict) -> str:
    order = ("passed", "failed", "error", "skipped", "xfailed", "timeout", "not run", "collected")
    return ", ".join(f"{counts[k]} {k}" for k in order if counts.get(k)) or "no tests"



def _recorder(path: Path):
    """A pytest plugin writing one JSON line per event, flushed at once: a stage ended by its timeout still leaves
    the outcome of every test that finished and the name of the one that was running."""
    import pytest

    def tail(text: str, lines: int = 40) -> str:
        return "\n".join(str(text).splitlines()[-lines:])

    def reason(report) -> str:
        lr = report.longrepr
        if isinstance(lr, tuple) and len(lr) == 3:
            return str(lr[2]).removeprefix("Skipped: ")
        return tail(str(lr), 3)

    class Recorder:
        def __init__(self):
            self.f = open(path, "a", encoding="utf-8")

        def write(self, **rec):
            self.f.write(json.dumps(rec, default=str) + "\n")
            self.f.flush()

        def pytest_collectreport(self, report):
            if report.failed:
                self.write(event="collect-error", nodeid=report.nodeid, text=tail(report.longreprtext))
            elif report.skipped:
                self.write(event="collect-skip", nodeid=report.nodeid, reason=reason(report))

        def pytest_collection_finish(self, session):
            self.write(event="collected", nodeids=[item.nodeid for item in session.items])
            self.write(event="plan", **compile_plan(session.items))

        def pytest_runtest_logstart(self, nodeid, location):
            self.write(event="start", nodeid=nodeid)

        @pytest.hookimpl(hookwrapper=True)
        def pytest_runtest_makereport(self, item, call):
            yield
            fixture = getattr(item, "funcargs", {}).get("benchmark") if call.when == "call" else None
            if fixture is not None and hasattr(fixture, "extra_info"):
                meta = getattr(fixture, "stats", None)
                stats = getattr(meta, "stats", None)
                self.write(event="benchmark", nodeid=item.nodeid, extra_info=dict(fixture.extra_info),
                           stats={k: getattr(stats, k, None) for k in ("min", "max", "mean", "median", "rounds")}
                           if stats is not None else {})

        def pytest_runtest_logreport(self, report):
            rec = dict(event="report", nodeid=report.nodeid, when=report.when, outcome=report.outcome,
                       duration=report.duration)
            if report.failed:
                rec["text"] = tail(report.longreprtext)
            elif report.skipped:
                rec["reason"] = reason(report)
            if hasattr(report, "wasxfail"):
                rec["xfail"] = report.wasxfail
            self.write(**rec)

        def pytest_sessionfinish(self, session, exitstatus):
            self.write(event="finish", exitstatus=int(exitstatus))

    return Recorder()



def plan_figures(stage: str, plan) -> dict:
    """The stage's compile plan against its budget: compiles.COSTS["start"] + Stage.run_s + the compiles' cost must
    fit in the budget less the margin before it at which the stage's children are ended (stages.py)."""
    from .runner import kill_margins
    from .stages import BY_NAME
    st = BY_NAME[stage]
    if not plan or "summary" not in plan:
        return dict(error=(plan or {}).get("error", "no plan: the recorder wrote none"), budget=st.budget)
    out = dict(plan["summary"], run_s=st.run_s, budget=st.budget, undeclared=plan.get("errors", []))
    out["seconds"] = round(out["seconds"] + st.run_s, 1)
    out["usable"] = round(st.budget - sum(kill_margins(st.budget)), 1)
    out["fits"] = out["seconds"] <= out["usable"]
    return out


def _plan_text(c: dict) -> str:
    if "error" in c:
        return f"compile plan failed: {c['error']}"
    return (f"plan: {c['triton']} Triton compile(s) ({c['triton_cached']} cached), {c['inductor']} inductor, "
            f"{c['autotune_configs']} autotuned config(s): ≈ {c['seconds']:.0f} s of {c['usable']:.1f} s usable in "
            f"{c['budget']:.0f} s")


def status(ctx: Context, o: Outcome, s: dict, what: str, stage: str = "") -> tuple:
    """(status, summary). On a GPU every test must run and pass: a skip there means something was not verified.
    The dry run also fails a stage whose compile plan does not fit its budget or has undeclared tests."""
    counts = s["counts"]
    text = _count_text(counts)
    plan = plan_figures(stage, s.get("plan")) if stage else None
    if s["collect_errors"]:
        text += f"; {len(s['collect_errors'])} collection error(s)"
    if s["collect_skips"]:
        text += f"; {len(s['collect_skips'])} module(s) skipped at collection"
    if ctx.dry:
        # pytest exits 5 when every module skipped itself at collection (no CUDA): listed, not an error
        ok = not o.timed_out and not s["collect_errors"] and (
            (o.rc == 0 and s["collected"] > 0) or (o.rc in (0, 5) and bool(s["collect_skips"])))
        skipped = f"; {len(s['collect_skips'])} module(s) skip without CUDA" if s["collect_skips"] else ""
        if plan is not None:
            ok = ok and "error" not in plan and plan["fits"] and not plan["undeclared"]
            skipped += f"; {_plan_text(plan)}" + ("; undeclared: " + " ".join(plan["undeclared"])
                                                  if plan.get("undeclared") else "")
        return ("passed" if ok else "failed"), f"dry run (--collect-only): {s['collected']} {what} collected" + \
            skipped
    if o.timed_out:
        return "timeout", f"{o.why()}: {text}"
    if plan is not None:
        text += f"; {_plan_text(plan)}"
    bad = [k for k in ("failed", "error", "skipped", "timeout", "not run") if counts.get(k)]
    if bad or s["collect_errors"] or s["collect_skips"] or not counts.get("passed") or o.rc not in (0, 1):
        return "failed", text + ("" if o.rc in (0, 1) else f" (pytest {o.why()})")
    return "passed", text


def figures_of(s: dict, stage: str = "") -> dict:
    """What the report keeps of a pytest run: counts, one row per test (node id, outcome, seconds, detail), and the
    compile plan against the budget."""
    rows = [dict(t, detail=str(t.get("detail", ""))[-1500:]) for t in s["tests"]]
    out = dict(counts=s["counts"], collected=s["collected"], finished=s["finished"], tests=rows,
               collect_errors=s["collect_errors"], collect_skips=s["collect_skips"], benchmarks=s["benchmarks"])
    if stage and s.get("plan") is not None:
        out["compiles"] = plan_figures(stage, s["plan"])
    return out


def run_pytest(ctx: Context, stage: str, args: List[str], timeout: float, what: str = "tests") -> StageResult:
    events = ctx.work / f"{stage}.events.jsonl"
    events.unlink(missing_ok=True)
    common = ["--rootdir", str(REPO), "-p", "no:cacheprovider"]
    common += ["--collect-only", "-q"] if ctx.dry else ["-v", "--tb=short"]

    def progress():
        s = summarize_events(events, collect_only=ctx.dry)
        ctx.partial(stage, StageResult("running", f"running: {_count_text(s['counts'])}", figures_of(s, stage)))

    ctx.progress = progress
    keys = ctx.work / "compiled-keys.json"   # Triton keys the stages so far compiled: their on-disk cache
    try:
        o, _ = ctx.child("pytest", timeout, args=["--events", str(events), "--"] + common + args,
                         env=ctx.env({KEYS_ENV: str(keys)}))
    finally:
        ctx.progress = None
    s = summarize_events(events, collect_only=ctx.dry)
    if s.get("plan") and s["plan"].get("new_keys"):
        write_atomic(keys, json.dumps(sorted(set(read_json(keys) or []) | set(s["plan"]["new_keys"]))))
    state, summary = status(ctx, o, s, what, stage)
    return StageResult(state, summary, figures_of(s, stage), [o.command], "" if o.ok else o.tail)


def child_pytest(events: Path, argv: List[str]) -> int:
    import pytest
    return int(pytest.main(argv, plugins=[_recorder(events)]))
