"""Benchmarks (pytest-benchmark modules) and the GPU acceptance run, ``python -m benchmarks.gpu_check``.

A regular package, not a namespace one: a namespace package gives way to any regular ``benchmarks`` package later on
sys.path (some installed distributions ship one), and then ``python -m benchmarks.gpu_check`` would find no
gpu_check and run nothing.
"""
