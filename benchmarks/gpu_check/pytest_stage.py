"""Stages that are pytest runs: the child runs pytest with a recorder plugin that writes one JSON line per event,
flushed at once, so a stage ended by its timeout (or a run killed from outside) still has the outcome of every
test that finished, the one that was running, and those that never started. While the child runs, the runner
turns that stream into the stage's partial result every few seconds and rewrites the report with it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List

from .runner import REPO, Context, Outcome, StageResult

def summarize_events(path: Path, collect_only: bool = False) -> dict:
    """Per-test outcomes from the recorder's JSON lines (see _recorder): what finished, what was running when the
    stage ended, what never started (or, with ``collect_only``, what was collected)."""
    tests: Dict[str, dict] = {}
    collected: List[str] = []
    collect_errors, collect_skips, benchmarks = [], [], {}
    finished = False
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
                collect_errors=collect_errors, collect_skips=collect_skips, benchmarks=benchmarks)



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



def status(ctx: Context, o: Outcome, s: dict, what: str) -> tuple:
    """(status, summary). On a GPU every test must run and pass: a skip there means something was not verified."""
    counts = s["counts"]
    text = _count_text(counts)
    if s["collect_errors"]:
        text += f"; {len(s['collect_errors'])} collection error(s)"
    if s["collect_skips"]:
        text += f"; {len(s['collect_skips'])} module(s) skipped at collection"
    if ctx.dry:
        # pytest exits 5 when every module skipped itself at collection (no CUDA): listed, not an error
        ok = not o.timed_out and not s["collect_errors"] and (
            (o.rc == 0 and s["collected"] > 0) or (o.rc in (0, 5) and bool(s["collect_skips"])))
        skipped = f"; {len(s['collect_skips'])} module(s) skip without CUDA" if s["collect_skips"] else ""
        return ("passed" if ok else "failed"), f"dry run (--collect-only): {s['collected']} {what} collected" + \
            skipped
    if o.timed_out:
        return "timeout", f"{o.why()}: {text}"
    bad = [k for k in ("failed", "error", "skipped", "timeout", "not run") if counts.get(k)]
    if bad or s["collect_errors"] or s["collect_skips"] or not counts.get("passed") or o.rc not in (0, 1):
        return "failed", text + ("" if o.rc in (0, 1) else f" (pytest {o.why()})")
    return "passed", text


def figures_of(s: dict) -> dict:
    """What the report keeps of a pytest run: counts, and one row per test (node id, outcome, seconds, detail)."""
    rows = [dict(t, detail=str(t.get("detail", ""))[-1500:]) for t in s["tests"]]
    return dict(counts=s["counts"], collected=s["collected"], finished=s["finished"], tests=rows,
                collect_errors=s["collect_errors"], collect_skips=s["collect_skips"], benchmarks=s["benchmarks"])


def run_pytest(ctx: Context, stage: str, args: List[str], timeout: float, what: str = "tests") -> StageResult:
    events = ctx.work / f"{stage}.events.jsonl"
    events.unlink(missing_ok=True)
    common = ["--rootdir", str(REPO), "-p", "no:cacheprovider"]
    common += ["--collect-only", "-q"] if ctx.dry else ["-v", "--tb=short"]

    def progress():
        s = summarize_events(events, collect_only=ctx.dry)
        ctx.partial(stage, StageResult("running", f"running: {_count_text(s['counts'])}", figures_of(s)))

    ctx.progress = progress
    try:
        o, _ = ctx.child("pytest", timeout, args=["--events", str(events), "--"] + common + args)
    finally:
        ctx.progress = None
    s = summarize_events(events, collect_only=ctx.dry)
    state, summary = status(ctx, o, s, what)
    return StageResult(state, summary, figures_of(s), [o.command], "" if o.ok else o.tail)


def child_pytest(events: Path, argv: List[str]) -> int:
    import pytest
    return int(pytest.main(argv, plugins=[_recorder(events)]))
