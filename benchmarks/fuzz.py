"""The extended wire-fuzz profile: tests/fuzz with marker fuzz_extended, --cases per service.

    python benchmarks/fuzz.py [--quick] [--cases 10000] [-k EXPR]

Runs pytest on tests/fuzz (-m fuzz_extended) with real servers in process (light RM node, tiny
sampler, orchestrator API), every test writing its tally (status counts per method, slowest
answer, RSS at start / peak / end, findings) to a temporary folder, and sums them per service.
--quick runs 300 cases per service. The last line printed is one JSON object:
{"bench": "fuzz", "cases_per_service": ..., "<service>_cases": ..., "<service>_codes": {...},
 "rss_peak_growth_mb": ..., "findings": ..., "pytest_rc": ...}.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVICES = {"reward_node": "RewardNode", "policy_sampler": "PolicySampler", "orchestrator": "Orchestrator"}


def service_of(test_id: str) -> str:
    for name in SERVICES:
        if f"test_fuzz_{name}" in test_id:
            return name
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 cases per service (about a minute).")
    ap.add_argument("--cases", type=int, default=None, help="Cases per service (default 10000, quick 300).")
    ap.add_argument("-k", dest="keyword", default=None, help="pytest -k expression to run a subset.")
    args = ap.parse_args()
    cases = args.cases or (300 if args.quick else 10_000)
    with tempfile.TemporaryDirectory(prefix="mor-fuzz-") as out:
        env = {**os.environ, "MOR_FUZZ_CASES": str(cases), "MOR_FUZZ_REPORT": out}
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "fuzz_extended", "--timeout", "0",
               "-W", "ignore::hypothesis.errors.HypothesisWarning", str(ROOT / "tests" / "fuzz")]
        if args.keyword:
            cmd += ["-k", args.keyword]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        tail = proc.stdout.strip().splitlines()[-15:]
        print("\n".join(tail))
        reports = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]

    per: dict[str, dict] = {s: {"cases": 0, "codes": collections.Counter(), "findings": 0} for s in SERVICES}
    growth = 0.0
    for r in reports:
        s = per.setdefault(service_of(r["test"]), {"cases": 0, "codes": collections.Counter(), "findings": 0})
        s["cases"] += r["cases"]
        s["findings"] += r["findings"]
        for codes in r["codes"].values():
            s["codes"].update(codes)
        growth = max(growth, r["rss_peak_mb"] - r["rss_start_mb"])
        print(f"{r['test']}: {r['cases']} cases, RSS {r['rss_start_mb']} -> peak {r['rss_peak_mb']} -> "
              f"{r['rss_end_mb']} MB, findings {r['findings']}")
    headline = {
        "bench": "fuzz",
        "cases_per_service": cases,
        "wall_s": round(wall, 1),
        "pytest_rc": proc.returncode,
        "findings": sum(s["findings"] for s in per.values()),
        "rss_peak_growth_mb": round(growth, 1),
        "rss_peak_mb": max((r["rss_peak_mb"] for r in reports), default=0.0),
    }
    for name, s in per.items():
        headline[f"{name}_cases"] = s["cases"]
        headline[f"{name}_codes"] = dict(sorted(s["codes"].items()))
    print(json.dumps(headline, sort_keys=True))


if __name__ == "__main__":
    main()
