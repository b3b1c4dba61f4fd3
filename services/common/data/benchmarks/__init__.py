"""Synthetic VQA benchmarks: one generator per file, looked up by name in `registry.BENCHMARKS`."""

from .base import Benchmark, QuestionType, SampledQuestion
from .registry import BENCHMARK_NAMES, BENCHMARKS, UnknownBenchmark, get_benchmark

__all__ = [
    "BENCHMARKS",
    "BENCHMARK_NAMES",
    "Benchmark",
    "QuestionType",
    "SampledQuestion",
    "UnknownBenchmark",
    "get_benchmark",
]
