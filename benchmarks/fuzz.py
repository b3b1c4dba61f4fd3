"""The extended wire-fuzz profile: tests/fuzz with marker fuzz_extended, --cases per service.

    python benchmarks/fuzz.py [--quick] [--cases 10000] [-k EXPR]

Runs pytest on tests/fuzz (-m fuzz_extended) against real servers, each in its own process
(`mor reward-node serve` with a light RM, `mor sampler serve` with the tiny policy, `mor
orchestrator serve`), every test writing its tally (status counts per method, slowest answer, the
server process's RSS at start / peak / end, the test process's RSS, findings) to a temporary
folder, and sums them per service. --quick runs 300 cases per service. The last line printed is
one JSON object:
{"bench": "fuzz", "cases_per_service": ..., "<service>_cases": ..., "<service>_codes": {...},
 "<service>_server_rss_mb": {"start": ..., "peak": ..., "end": ..., "peak_growth": ...},
 "rss_of": "server processes", "rss_peak_growth_mb": ..., "rss_peak_mb": ...,
 "client_rss_peak_growth_mb": ..., "findings": ..., "pytest_rc": ...}.
rss_peak_growth_mb is the largest growth of a server's RSS over one test (peak minus the RSS at
the test's start), the figure the tests bound (RSS_PEAK_BUDGET_MB); client_* is the pytest
process (hypothesis and the case generator), reported, not bounded.
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
        # In the order the tests ended (each writes its report at its end).
        reports = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"), key=lambda p: p.stat().st_mtime_ns)]

    def new() -> dict:
        return {"cases": 0, "codes": collections.Counter(), "findings": 0, "rss": None}

    per: dict[str, dict] = {s: new() for s in SERVICES}
    growth = client_growth = 0.0
    for r in reports:
        s = per.setdefault(service_of(r["test"]), new())
        s["cases"] += r["cases"]
        s["findings"] += r["findings"]
        for codes in r["codes"].values():
            s["codes"].update(codes)
        g = r["rss_peak_mb"] - r["rss_start_mb"]
        growth = max(growth, g)
        client_growth = max(client_growth, r.get("client_rss_peak_mb", 0.0) - r.get("client_rss_start_mb", 0.0))
        # The service's server: its RSS at the start of its first test, its peak, at the end of its
        # last test, and the largest growth over one test.
        if s["rss"] is None:
            s["rss"] = {"start": r["rss_start_mb"], "peak": r["rss_peak_mb"], "end": r["rss_end_mb"], "peak_growth": g}
        else:
            s["rss"].update(peak=max(s["rss"]["peak"], r["rss_peak_mb"]), end=r["rss_end_mb"],
                            peak_growth=max(s["rss"]["peak_growth"], g))
        print(f"{r['test']}: {r['cases']} cases, server RSS {r['rss_start_mb']} -> peak {r['rss_peak_mb']} -> "
              f"{r['rss_end_mb']} MB (growth {g:.1f}), test process {r.get('client_rss_start_mb')} -> peak "
              f"{r.get('client_rss_peak_mb')} MB, findings {r['findings']}, server alive {r.get('server_alive')}")
    headline = {
        "bench": "fuzz",
        "cases_per_service": cases,
        "wall_s": round(wall, 1),
        "pytest_rc": proc.returncode,
        "findings": sum(s["findings"] for s in per.values()),
        "rss_of": "server processes",
        "rss_peak_growth_mb": round(growth, 1),
        "rss_peak_mb": max((r["rss_peak_mb"] for r in reports), default=0.0),
        "client_rss_peak_growth_mb": round(client_growth, 1),
        "client_rss_peak_mb": max((r.get("client_rss_peak_mb", 0.0) for r in reports), default=0.0),
    }
    for name, s in per.items():
        headline[f"{name}_cases"] = s["cases"]
        headline[f"{name}_codes"] = dict(sorted(s["codes"].items()))
        if s["rss"] is not None:
            headline[f"{name}_server_rss_mb"] = {k: round(v, 1) for k, v in s["rss"].items()}
    print(json.dumps(headline, sort_keys=True))


if __name__ == "__main__":
    main()
