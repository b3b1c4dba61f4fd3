"""Name -> benchmark generator table (one dict literal; an unknown name fails with the supported list)."""

from __future__ import annotations

from .base import Benchmark
from .charts import ChartsBenchmark
from .digits import DigitsBenchmark
from .shapes import ShapesBenchmark

BENCHMARKS: dict[str, type[Benchmark]] = {
    "shapes": ShapesBenchmark,
    "digits": DigitsBenchmark,
    "charts": ChartsBenchmark,
}
BENCHMARK_NAMES: tuple[str, ...] = tuple(BENCHMARKS)

_instances: dict[str, Benchmark] = {}


class UnknownBenchmark(KeyError):
    """A benchmark name that is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


def get_benchmark(name: str) -> Benchmark:
    """The (stateless, shared) generator for `name`; raises UnknownBenchmark listing the supported names."""
    if name not in BENCHMARKS:
        raise UnknownBenchmark(f"unknown benchmark {name!r}; supported: {', '.join(BENCHMARK_NAMES)}")
    if name not in _instances:
        _instances[name] = BENCHMARKS[name]()
    return _instances[name]
