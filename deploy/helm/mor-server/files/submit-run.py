"""Submit a MoR run config to the orchestrator API (StartRun) and follow it (WatchRun) to its end.

    python submit-run.py --address orchestrator:50071 --ca-cert ca.pem --cert me.pem --key me.key \\
        --token-file operator.token run.yaml

Runs inside any MoR image (it uses the installed `mor` package for the stubs and TLS helpers). The
mor-server chart mounts it at /etc/mor/submit-run.py; the compose stack runs it as its `submit`
service. Prints one line per training step and, last, one JSON object with the outcome.
Exit codes: 0 the run COMPLETED, 1 it FAILED or was STOPPED, 2 a call failed, 3 bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import grpc

from services.common.config import ConfigError, TLSSection
from services.common.grpc.credentials import channel_credentials, channel_options
from services.common.grpc.tls_diagnosis import describe_rpc_error
from services.common.wire import orchestrator_pb2, orchestrator_pb2_grpc

TERMINAL = {orchestrator_pb2.RUN_STATE_COMPLETED, orchestrator_pb2.RUN_STATE_FAILED, orchestrator_pb2.RUN_STATE_STOPPED}


def _state(value: int) -> str:
    return orchestrator_pb2.RunState.Name(value).removeprefix("RUN_STATE_")


def _step_line(m: orchestrator_pb2.StepMetrics, total: int) -> str:
    nodes = " ".join(f"{n.node_id}:{'ok' if n.responded else n.error_code or 'missing'}" for n in m.nodes)
    return (f"step {m.step}/{total} v{m.policy_version} reward {m.reward_mean:+.3f} kl {m.kl:.4f} "
            f"loss {m.loss:+.4f} {m.phase_times.total_seconds:.1f}s [{nodes}]")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config", type=Path, help="RunConfig YAML to submit.")
    p.add_argument("--address", required=True, help="host:port of the orchestrator API.")
    p.add_argument("--insecure", action="store_true", help="Plaintext (local demos only).")
    p.add_argument("--ca-cert", type=Path)
    p.add_argument("--cert", type=Path)
    p.add_argument("--key", type=Path)
    p.add_argument("--token-file", type=Path, help="Bearer token accepted by the orchestrator's tokens file.")
    p.add_argument("--run-id", default="", help="Run id; empty lets the orchestrator choose.")
    p.add_argument("--override", action="append", default=[], help="Dotted override, e.g. grpo.steps=2 (repeat).")
    p.add_argument("--wait-s", type=float, default=120.0, help="How long to wait for the API to come up.")
    args = p.parse_args(argv)
    try:
        tls = TLSSection(insecure=args.insecure, ca_cert=args.ca_cert, cert=args.cert, key=args.key)
        creds = channel_credentials(tls)
        config_yaml = args.config.read_text()
        token = args.token_file.read_text().strip() if args.token_file else None
    except (ConfigError, ValueError, OSError) as exc:
        print(f"submit-run: error: {exc}", file=sys.stderr)
        return 3
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    options = channel_options(64 * 1024 * 1024)
    channel = (grpc.secure_channel(args.address, creds, options=options) if creds is not None
               else grpc.insecure_channel(args.address, options=options))
    stub = orchestrator_pb2_grpc.OrchestratorStub(channel)
    try:
        grpc.channel_ready_future(channel).result(timeout=args.wait_s)
        started = stub.StartRun(orchestrator_pb2.StartRunRequest(
            run_id=args.run_id, config_yaml=config_yaml, overrides=args.override), metadata=metadata, timeout=60)
        run_id, total = started.run.run_id, started.run.total_steps
        print(f"submit-run: started run {run_id} ({total} steps) on {args.address}", flush=True)
        start = time.monotonic()
        state = started.run.state
        for item in stub.WatchRun(orchestrator_pb2.WatchRunRequest(run_id=run_id, from_step=1), metadata=metadata):
            event = item.event
            if event.HasField("step"):
                print(_step_line(event.step, total), flush=True)
            elif event.HasField("state_change"):
                state = event.state_change.state
                reason = f" ({event.state_change.reason})" if event.state_change.reason else ""
                print(f"submit-run: {_state(state)}{reason}", flush=True)
                if state in TERMINAL:
                    break
        run = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=run_id), metadata=metadata, timeout=30).run
    except grpc.FutureTimeoutError:
        print(f"submit-run: error: {args.address} not reachable within {args.wait_s:.0f} s", file=sys.stderr)
        return 2
    except grpc.RpcError as err:  # a TLS failure says which side refused and why
        print(f"submit-run: error: {describe_rpc_error(err, args.address, tls)}", file=sys.stderr)
        return 2
    finally:
        channel.close()
    print(json.dumps({"run_id": run.run_id, "state": _state(run.state), "steps_done": run.step,
                      "total_steps": run.total_steps, "policy_version": run.policy_version,
                      "reward_mean": round(run.latest_metrics.reward_mean, 4), "seconds": round(time.monotonic() - start, 1),
                      "error": run.error_message}), flush=True)
    return 0 if run.state == orchestrator_pb2.RUN_STATE_COMPLETED else 1


if __name__ == "__main__":
    sys.exit(main())
