"""Benchmark scripts (speed goals live here and in BENCHMARKS.md, never in timed tests).

    python -m srlm.bench.sampling --help
"""
