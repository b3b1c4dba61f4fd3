"""RSS of the fuzz suite's own case generation, with no server: how much of the extended profile's
RSS growth is the test process (hypothesis) rather than the services it fuzzes.

    python benchmarks/results/fuzz_generation_rss.py score_batch 3000
    python benchmarks/results/fuzz_generation_rss.py start_run 3500
    python benchmarks/results/fuzz_generation_rss.py score_batch 3000 250   # in runs of 250, as run_cases does now

Builds the strategy of tests/fuzz/test_fuzz_reward_node.py::test_score_batch or
tests/fuzz/test_fuzz_orchestrator.py::test_start_run exactly as the test does, runs it through
hypothesis with run_cases' settings (no database, no shrinking), and only serialises each case;
with a third argument, in fresh hypothesis runs of that many cases with the memory given back
after each (tests/fuzz/conftest.py's run_cases in the extended profile, CHUNK_CASES).
Prints one JSON line: cases, RSS at start and peak (MB), mean request size (KB), seconds.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import sys
import time
from pathlib import Path

import psutil
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FUZZ = ROOT / "tests" / "fuzz"


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def strategy_of(which: str):
    wf = _load("wirefuzz", FUZZ / "wirefuzz.py")
    if which == "start_run":
        from services.common.wire import orchestrator_pb2

        orch = _load("fuzz_orchestrator", FUZZ / "test_fuzz_orchestrator.py")
        return orch.fuzzer(wf).message(orchestrator_pb2.StartRunRequest.DESCRIPTOR)
    from services.common.wire import reward_node_pb2

    node = _load("fuzz_reward_node", FUZZ / "test_fuzz_reward_node.py")
    f = node.fuzzer(wf)
    gdesc = reward_node_pb2.ScoreGroup.DESCRIPTOR
    group = st.one_of(f.message(gdesc, depth=1), f.near(gdesc, node.valid_group(wf), depth=1), node.valid_group(wf))
    batch = st.lists(group, min_size=1, max_size=6) | st.lists(node.valid_group(wf), min_size=60, max_size=70)
    return st.one_of(f.message(reward_node_pb2.ScoreBatchRequest.DESCRIPTOR),
                     batch.map(lambda gs: reward_node_pb2.ScoreBatchRequest(groups=gs)))


def main() -> None:
    which, n = sys.argv[1], int(sys.argv[2])
    chunk = int(sys.argv[3]) if len(sys.argv) > 3 else n
    strategy = strategy_of(which)
    wf = sys.modules["wirefuzz"]
    proc = psutil.Process()
    start = proc.memory_info().rss / 2**20
    seen = {"peak": start, "cases": 0, "bytes": 0}

    def run(k: int) -> None:
        @settings(max_examples=k, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                  phases=(Phase.explicit, Phase.generate))
        @given(strategy)
        def inner(req) -> None:
            seen["bytes"] += len(req.SerializeToString())
            seen["cases"] += 1
            seen["peak"] = max(seen["peak"], proc.memory_info().rss / 2**20)

        inner()

    t0 = time.perf_counter()
    done = 0
    while done < n:
        run(min(chunk, n - done))
        done += chunk
        if chunk < n:
            gc.collect()
            wf.trim_memory()
    print(json.dumps({"strategy": which, "chunk": chunk, "cases": seen["cases"], "rss_start_mb": round(start, 1),
                      "rss_peak_mb": round(seen["peak"], 1), "rss_growth_mb": round(seen["peak"] - start, 1),
                      "mean_request_kb": round(seen["bytes"] / max(1, seen["cases"]) / 1024, 1),
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
