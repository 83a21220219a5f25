"""The run's two files: figures.json (everything measured, by stage) and report.md (the same, for people)."""
from __future__ import annotations

import json
from typing import List

from .runner import write_atomic
from .stages import BY_NAME, STAGES


def _cell(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _table(head: List[str], rows: List[list]) -> List[str]:
    return (["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
            + ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows])


def _block(text: str, lines: int = 30) -> List[str]:
    body = "\n".join(str(text).rstrip().splitlines()[-lines:]).replace("```", "'''")
    return ["```", body, "```", ""] if body.strip() else []


def verdict(doc: dict) -> str:
    stages = doc["stages"]
    selected = doc["run"]["stages_selected"]
    if any(stages.get(n, {}).get("status") not in (None, "passed", "running") for n in selected):
        return "FAILED"
    return "PASSED" if all(stages.get(n, {}).get("status") == "passed" for n in selected) else "INCOMPLETE"


def render(doc: dict) -> str:
    run, stages = doc["run"], doc["stages"]
    out = ["# GPU check report", ""]
    if run["dry_run"]:
        out += ["**DRY RUN on the CPU: no GPU was used; this shows that the stages, their commands and this report "
                "work, and measures nothing.**", ""]
    out += [f"`make gpu-check` (benchmarks/gpu_check, docs/gpu-check.md), started {run['run_id']}; "
            f"{run['elapsed_s']:.0f} s of {run['limit_s']:.0f} s so far. **Result: {verdict(doc)}**.", ""]
    rows = []
    for name in run["stages_selected"]:
        r = stages.get(name)
        s = BY_NAME[name]
        rows.append([name, r["status"] if r else "not run yet", f"{r['seconds']:.0f} s" if r else "—",
                     f"{s.budget:.0f} s", r["summary"] if r else ""])
    out += ["## Summary", ""] + _table(["stage", "status", "took", "budget", "result"], rows) + [""]
    for s in STAGES:
        r = stages.get(s.name)
        if r is None:
            continue
        out += [f"## {s.title}", "", f"**{r['status']}** in {r['seconds']:.0f} s (timeout {r['timeout']:.0f} s). "
                f"{r['summary']}", ""]
        fig = r.get("figures", {})
        env = fig.get("environment")
        if env:
            v = env.get("versions", {})
            devs = ", ".join(f"{d['name']} (sm_{d['major']}{d['minor']}, {d['memory_gib']} GiB)"
                             for d in env.get("devices", [])) or "none visible"
            out += _table(["", ""], [["GPU", devs], ["CUDA (torch) / nvcc", f"{env.get('torch_cuda')} / "
                                     f"{env.get('nvcc')}"], ["TORCH_CUDA_ARCH_LIST", env.get("arch_list")],
                                     ["Python", env.get("python")]]
                          + [[k, v.get(k) or "not installed"] for k in ("torch", "triton", "pytest",
                                                                       "pytest-benchmark", "setuptools")]) + [""]
        if fig.get("extra_info"):
            out += ["Benchmark figures (`extra_info`):", ""]
            out += _table(["benchmark", "figures"], [[k, json.dumps(v, default=str)[:600]]
                                                     for k, v in fig["extra_info"].items()]) + [""]
        plan = fig.get("compiles")
        if plan and "error" not in plan:
            out += [f"Compile plan (counted from its tests, benchmarks/gpu_check/compiles.py): {plan['triton']} Triton "
                    f"compile(s), {plan['triton_cached']} from earlier stages' cache, {plan['inductor']} inductor "
                    f"compile(s), {plan['autotune_configs']} autotuned config(s) ≈ {plan['seconds']:.0f} s with "
                    f"start-up and the tests' own time, of the {plan['usable']:.1f} s its {plan['budget']:.0f} s "
                    f"budget leaves.", ""]
        elif plan:
            out += [f"Compile plan: {plan['error']}", ""]
        if fig.get("checks"):
            out += _table(["check", "holds"], [[k, v] for k, v in fig["checks"].items()]) + [""]
        tests = fig.get("tests", [])
        if tests:
            out += _table(["test", "outcome", "seconds"],
                          [[t["nodeid"], t["outcome"], f"{t.get('seconds', 0):.2f}"] for t in tests]) + [""]
            for t in tests:
                if t["outcome"] in ("failed", "error") and t.get("detail"):
                    out += [f"`{t['nodeid']}`:", ""] + _block(t["detail"])
        for e in fig.get("collect_errors", []):
            out += [f"Collection error in `{e['nodeid']}`:", ""] + _block(e.get("text", ""))
        if r.get("log_tail") and r["status"] != "passed":
            out += ["End of its log:", ""] + _block(r["log_tail"])
        for hint in fig.get("hints", []):
            out += [f"Hint: {hint}", ""]
    out += ["## Commands", ""]
    for name, r in stages.items():
        out += [f"- {name}: `{c}`" for c in r.get("commands", [])]
    out += ["", "Every child's output: `gpu-check.log`, beside this report.", ""]
    return "\n".join(out)


def write(ctx, selected: List[str]) -> None:
    """Rewrite figures.json and report.md from what the run holds now (atomically, each)."""
    from .runner import FIGURES_NAME, REPORT_NAME
    from .stages import gpu_total
    doc = dict(run=dict(run_id=ctx.run_id, dry_run=ctx.dry, elapsed_s=round(ctx.elapsed(), 1),
                        limit_s=gpu_total(), budget_s=ctx.budget, stages_selected=selected),
               stages=ctx.results)
    doc["run"]["verdict"] = verdict(doc)
    write_atomic(ctx.out / FIGURES_NAME, json.dumps(doc, indent=1, default=str))
    write_atomic(ctx.out / REPORT_NAME, render(doc))
