"""Reward-node overload: capacity first, then 10x capacity offered, on loopback.

    python benchmarks/overload.py [--quick] [--overload-s 30] [--factor 10] [--max-queue-delay-ms MS]

The node runs in a child process (a random-init light RM: MiniLM text + small image CNN; dynamic
batching as configured; plaintext loopback), so the load generator does not share its event loop
or GIL. Every call is a ScoreBatch of --groups groups of --group-size answers with a 64x64 PNG,
with a --deadline-s deadline.

1. unloaded: one call at a time for --unloaded-s: the latency a call sees on an idle node;
2. capacity: the best OK calls per second of closed-loop callers, over the --concurrency counts
   (--capacity-s each);
3. overload: open-loop arrivals at --factor x capacity for --overload-s (each call sent at its
   scheduled time, whatever happened to the previous ones): admitted (OK) calls per second,
   their latency, and the latency of the refusals (RESOURCE_EXHAUSTED) and of anything else.

The last line printed is one JSON object: goodput_ratio (admitted OK/s under overload / capacity),
reject_p99_ms, admitted_p99_ms, unloaded_p99_ms, rss_growth_mb (the node's RSS after the overload
minus before it), with the counts, the offered rate achieved and the goals (goodput >= 0.9,
admitted p99 <= 2x unloaded p99).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


# ---- the node (child process) --------------------------------------------------------------------

def serve(args: argparse.Namespace) -> None:
    import torch

    from services.common.config import RewardNodeSettings
    from services.reward_node.app import build_app
    from services.reward_node.checkpoint import LoadedRM
    from services.reward_node.rm import LightRM

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = LoadedRM(LightRM().eval(), {"model_version": "light-overload", "kind": "light"}, None)
    batching = {"max_batch_size": args.batch_size, "max_wait_ms": args.max_wait_ms}
    if args.max_queue_delay_ms is not None:
        batching["max_queue_delay_ms"] = args.max_queue_delay_ms
    settings = RewardNodeSettings(node_id="overload", model={"kind": "light", "torch_threads": args.threads},
                                  tls={"insecure": True}, metrics={"enabled": False},
                                  server={"host": "127.0.0.1", "port": 0, "grace_s": 0.5,
                                          "max_concurrent_rpcs": args.max_concurrent_rpcs}, batching=batching)

    async def main() -> None:
        app = build_app(settings, loaded=loaded)
        port = await app.start()
        Path(args.serve).write_text(str(port))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await app.stop(0)

    asyncio.run(main())


# ---- the load -------------------------------------------------------------------------------------

def request_bytes(groups: int, group_size: int) -> list[bytes]:
    """A few distinct ScoreBatch requests (serialized), cycled through by the callers."""
    import numpy as np
    from PIL import Image

    from services.common.wire import common_pb2, reward_node_pb2

    rng = np.random.default_rng(0)
    out = []
    for r in range(16):
        gs = []
        for g in range(groups):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
            gs.append(reward_node_pb2.ScoreGroup(
                group_id=f"g{g}", prompt=f"How many shapes are there? [{r}.{g}]",
                image=common_pb2.Image(data=buf.getvalue(), mime_type="image/png"),
                responses=[f"{('three', 'B', 'seven', 'odd')[j % 4]} ({r}.{g}.{j})" for j in range(group_size)]))
        out.append(reward_node_pb2.ScoreBatchRequest(groups=gs).SerializeToString())
    return out


def pct(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


class Load:
    def __init__(self, address: str, payloads: list[bytes], deadline_s: float) -> None:
        import grpc

        self.grpc = grpc
        self.channel = grpc.aio.insecure_channel(address)
        self.call = self.channel.unary_unary("/mor.v1.RewardNode/ScoreBatch")
        self.payloads = payloads
        self.deadline_s = deadline_s
        self.i = 0

    async def one(self, results: list[tuple[str, float, float]]) -> None:
        """Send one call; append (code, latency s, finish time)."""
        payload = self.payloads[self.i % len(self.payloads)]
        self.i += 1
        t0 = time.perf_counter()
        try:
            await self.call(payload, timeout=self.deadline_s)
            code = "OK"
        except self.grpc.aio.AioRpcError as exc:
            code = exc.code().name
        t1 = time.perf_counter()
        results.append((code, t1 - t0, t1))

    async def closed_loop(self, concurrency: int, seconds: float) -> list[tuple[str, float, float]]:
        results: list[tuple[str, float, float]] = []
        end = time.perf_counter() + seconds

        async def caller() -> None:
            while time.perf_counter() < end:
                await self.one(results)
                if results[-1][0] != "OK":
                    await asyncio.sleep(0.01)  # a refused caller backs off a little, as a client should

        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return results

    async def open_loop(self, rate: float, seconds: float) -> tuple[list[tuple[str, float, float]], int, float]:
        """Calls sent at `rate` per second for `seconds` (in small bursts, on schedule)."""
        results: list[tuple[str, float, float]] = []
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.perf_counter()
        sent = 0
        while True:
            now = time.perf_counter()
            if now - t0 >= seconds:
                break
            due = int((now - t0) * rate) + 1
            while sent < due:
                task = asyncio.ensure_future(self.one(results))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
            await asyncio.sleep(0.002)
        span = time.perf_counter() - t0
        if tasks:
            await asyncio.gather(*tasks)
        return results, sent, span


async def drive(args: argparse.Namespace, address: str, node_pid: int) -> dict:
    import psutil

    node = psutil.Process(node_pid)
    load = Load(address, request_bytes(args.groups, args.group_size), args.deadline_s)
    await load.closed_loop(4, 2.0)  # warm-up
    unloaded = await load.closed_loop(1, args.unloaded_s)
    # Capacity is the best sustained OK rate over several caller counts: too few callers cannot fill
    # the node's batches (4 callers x 4 answers is half of one batch) and under-measure it.
    levels = {}
    for n in args.concurrency:
        res = await load.closed_loop(n, args.capacity_s)
        levels[n] = (res, sum(r[0] == "OK" for r in res) / args.capacity_s)
    best = max(levels, key=lambda n: levels[n][1])
    cap_res, capacity = levels[best]
    cap_ok = [r for r in cap_res if r[0] == "OK"]
    await asyncio.sleep(0.5)
    rss_before = node.memory_info().rss / 2**20
    rate = args.factor * capacity
    t_start = time.perf_counter()
    res, sent, span = await load.open_loop(rate, args.overload_s)
    rss_after = node.memory_info().rss / 2**20
    await load.channel.close()
    codes = collections.Counter(r[0] for r in res)
    admitted_all = [r[1] for r in res if r[0] == "OK"]
    # Goodput counts the OK answers that arrived within the overload window (those admitted late
    # in it and finishing after it are not credited to it).
    window_end = t_start + span
    ok = [r[1] for r in res if r[0] == "OK" and r[2] <= window_end]
    rejected = [r[1] for r in res if r[0] == "RESOURCE_EXHAUSTED"]
    other = [r[1] for r in res if r[0] not in ("OK", "RESOURCE_EXHAUSTED")]
    unloaded_lat = [r[1] for r in unloaded if r[0] == "OK"]
    goodput = len(ok) / span
    return {
        "bench": "overload",
        "groups": args.groups,
        "group_size": args.group_size,
        "capacity_ok_per_s": round(capacity, 2),
        "capacity_by_callers": {n: round(v, 2) for n, (_, v) in levels.items()},
        "capacity_callers": best,
        "capacity_p99_ms": round(pct([r[1] for r in cap_ok], 99) * 1e3, 1),
        "capacity_codes": dict(collections.Counter(r[0] for r in cap_res)),
        "offered_per_s": round(sent / span, 1),
        "offered_target_per_s": round(rate, 1),
        "overload_s": round(span, 2),
        "overload_codes": dict(codes),
        "admitted_ok_per_s": round(goodput, 2),
        "goodput_ratio": round(goodput / capacity, 3) if capacity else 0.0,
        "admitted_p50_ms": round(pct(admitted_all, 50) * 1e3, 1),
        "admitted_p99_ms": round(pct(admitted_all, 99) * 1e3, 1),
        "reject_p50_ms": round(pct(rejected, 50) * 1e3, 2),
        "reject_p99_ms": round(pct(rejected, 99) * 1e3, 2),
        "other_p99_ms": round(pct(other, 99) * 1e3, 1) if other else None,
        "unloaded_p50_ms": round(pct(unloaded_lat, 50) * 1e3, 1),
        "unloaded_p99_ms": round(pct(unloaded_lat, 99) * 1e3, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_growth_mb": round(rss_after - rss_before, 1),
        "max_queue_delay_ms": args.max_queue_delay_ms if args.max_queue_delay_ms is not None else "node default",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="Short phases (about 20 s in all).")
    ap.add_argument("--unloaded-s", type=float, default=None, help="Unloaded phase (default 4, quick 2).")
    ap.add_argument("--capacity-s", type=float, default=None, help="Capacity phase per caller count (default 5, quick 1.5).")
    ap.add_argument("--overload-s", type=float, default=None, help="Overload phase (default 30, quick 6).")
    ap.add_argument("--factor", type=float, default=10.0, help="Offered load as a multiple of capacity.")
    ap.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[2, 4, 8, 16, 32],
                    help="Closed-loop caller counts tried when measuring capacity, comma-separated; the best "
                    "OK rate is the capacity (refused callers back off 10 ms).")
    ap.add_argument("--groups", type=int, default=1, help="Groups per ScoreBatch call.")
    ap.add_argument("--group-size", type=int, default=4, help="Answers per group.")
    ap.add_argument("--deadline-s", type=float, default=10.0, help="Deadline of every call.")
    ap.add_argument("--batch-size", type=int, default=32, help="Node: batching.max_batch_size.")
    ap.add_argument("--max-wait-ms", type=float, default=5.0, help="Node: batching.max_wait_ms.")
    ap.add_argument("--max-queue-delay-ms", type=float, default=None,
                    help="Node: batching.max_queue_delay_ms (default: the node's own default).")
    ap.add_argument("--threads", type=int, default=1, help="Node: torch intra-op threads.")
    ap.add_argument("--max-concurrent-rpcs", type=int, default=256,
                    help="Node: server.max_concurrent_rpcs (gRPC refuses calls beyond it before any handler runs).")
    ap.add_argument("--pin", action="store_true",
                    help="Pin the node to the first CPU and the load generator to the others (needs >= 2 CPUs), "
                    "so that the generator's own work does not take the node's CPU.")
    ap.add_argument("--serve", default=None, help=argparse.SUPPRESS)  # internal: run the node, port to this file
    args = ap.parse_args()
    if args.serve:
        serve(args)
        return
    args.unloaded_s = args.unloaded_s or (2.0 if args.quick else 4.0)
    args.capacity_s = args.capacity_s or (1.5 if args.quick else 5.0)  # per caller count
    args.overload_s = args.overload_s or (6.0 if args.quick else 30.0)

    with tempfile.TemporaryDirectory(prefix="mor-overload-") as tmp:
        port_file = Path(tmp) / "port"
        cmd = [sys.executable, __file__, "--serve", str(port_file), "--batch-size", str(args.batch_size),
               "--max-wait-ms", str(args.max_wait_ms), "--threads", str(args.threads),
               "--max-concurrent-rpcs", str(args.max_concurrent_rpcs)]
        if args.max_queue_delay_ms is not None:
            cmd += ["--max-queue-delay-ms", str(args.max_queue_delay_ms)]
        child = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL)
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) < 2:
                raise SystemExit(f"--pin needs at least 2 CPUs, this process may use {len(cpus)}")
            os.sched_setaffinity(child.pid, cpus[:1])
            os.sched_setaffinity(0, cpus[1:])
        try:
            t0 = time.monotonic()
            while not port_file.exists() or not port_file.read_text():
                if child.poll() is not None or time.monotonic() - t0 > 120:
                    raise SystemExit(f"the node did not start (exit {child.poll()})")
                time.sleep(0.1)
            head = asyncio.run(drive(args, f"127.0.0.1:{port_file.read_text()}", child.pid))
        finally:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    head["pinned"], head["max_concurrent_rpcs"] = args.pin, args.max_concurrent_rpcs
    head["goal_goodput"] = head["goodput_ratio"] >= 0.9
    head["goal_latency"] = head["admitted_p99_ms"] <= 2 * head["unloaded_p99_ms"]
    print(f"capacity {head['capacity_ok_per_s']} OK/s (p99 {head['capacity_p99_ms']} ms); unloaded p99 "
          f"{head['unloaded_p99_ms']} ms; offered {head['offered_per_s']}/s for {head['overload_s']} s: "
          f"{head['overload_codes']}")
    print(f"admitted {head['admitted_ok_per_s']} OK/s = {head['goodput_ratio']} of capacity, p99 "
          f"{head['admitted_p99_ms']} ms; refusals p99 {head['reject_p99_ms']} ms; node RSS +{head['rss_growth_mb']} MB")
    print(json.dumps(head, sort_keys=True))


if __name__ == "__main__":
    main()
