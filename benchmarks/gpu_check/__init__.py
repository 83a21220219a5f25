"""The GPU acceptance run, ``make gpu-check``: one file per stage (build, fit_parity, attention_parity, bench,
training, compile_check, selfcheck), the order and budgets in stages.py, the runner in runner.py, the two output
files in report.py. Entry point: ``python -m benchmarks.gpu_check`` (__main__.py); docs/gpu-check.md."""
