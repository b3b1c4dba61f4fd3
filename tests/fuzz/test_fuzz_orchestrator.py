"""Fuzz of a real Orchestrator API server: StartRun (generated YAML and Struct configs, hostile
YAML, overrides), GetRun / WatchRun / StopRun, the node registry and raw request bytes. Every
answer must be OK or a documented status with a bounded message; the RSS of the server's process
(`mor orchestrator serve`) must stay bounded."""
from __future__ import annotations

from google.protobuf import json_format, struct_pb2
from hypothesis import strategies as st

from services.common.wire import orchestrator_pb2

RSS_PEAK_BUDGET_MB = 768
API = "/mor.v1.Orchestrator/"


def _laughs(levels: int) -> str:
    """A YAML alias bomb: 9**levels leaves once expanded, a few hundred bytes as text."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines)


HOSTILE_YAML = (
    "grpo: [unclosed", "grpo: {group_size: 1}", "- a\n- b", "42", "null", "~", "", "a: &a [*a]", "a: &a {b: *a}",
    "!!python/object/apply:os.system ['true']", "a: !!binary AAAA", "a: 2001-12-14", "? [1, 2]\n: x", "{1: 2}",
    "grpo: {steps: .inf}", "grpo: {lr: .nan}", "seed: 1e400", "seed: 99999999999999999999999999", "world: /etc",
    "output_dir: /tmp/evil", "nodes: [{node_id: a, address: '127.0.0.1:1'}]", "\x00", "a: \"\\ud800\"",
    "policy: {checkpoint: /etc/passwd}", "sampler: {address: 'x:1'}", _laughs(4), _laughs(6),
)
DOTTED = ("grpo.beta=0.02", "grpo.steps=1", "grpo=1", "a.b.c.d=1", "=1", "x", "grpo.steps", ".=.", "grpo..steps=1",
          "grpo.steps=[", "grpo.steps=&a [*a]", "nodes.0.node_id=x")


def _yaml_texts(wf):
    return st.one_of(st.sampled_from(HOSTILE_YAML), st.integers(1, 5).map(lambda n: "[" * 10**n),
                     st.integers(1, 5).map(lambda n: "a:\n" + "".join(" " * i + "b:\n" for i in range(10 ** min(n, 3)))),
                     st.integers(1, 5).map(lambda n: "{" * 10**n), wf.texts())


def _struct_of(value):
    s = struct_pb2.Struct()
    json_format.ParseDict(value, s)
    return s


def fuzzer(wf):
    json_like = st.recursive(st.none() | st.booleans() | st.floats() | st.text(max_size=10),
                             lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                             max_leaves=10)
    sections = st.dictionaries(st.sampled_from(("grpo", "router", "fanout", "seed", "nodes", "policy", "world", "hybrid",
                                                "sampler", "checkpoint_every", "device")) | st.text(max_size=6),
                               json_like, max_size=3)
    run_ids = st.one_of(st.sampled_from(("r1", "r2", "../escape", "/tmp/abs", "a/b", ".", "..", "", "\x00")), wf.texts())
    return wf.Fuzzer({
        "mor.v1.StartRunRequest.config_yaml": lambda g: st.one_of(_yaml_texts(wf), g),
        "mor.v1.StartRunRequest.config_struct": lambda g: st.one_of(sections.map(_struct_of), g),
        "mor.v1.StartRunRequest.overrides": lambda g: st.one_of(st.lists(st.sampled_from(DOTTED) | wf.texts(), max_size=3), g),
        "mor.v1.StartRunRequest.run_id": lambda g: st.one_of(run_ids, g),
        "mor.v1.GetRunRequest.run_id": lambda g: st.one_of(run_ids, g),
        "mor.v1.StopRunRequest.run_id": lambda g: st.one_of(run_ids, g),
        "mor.v1.WatchRunRequest.run_id": lambda g: st.one_of(run_ids, g),
        "mor.v1.RegisterNodeRequest.endpoint": lambda g: st.one_of(
            st.sampled_from(("127.0.0.1:1", "127.0.0.1:0", "[::1]:1", "0:0", "127.0.0.1:99999", "localhost:1", ":1",
                             "127.0.0.1", "dns:///127.0.0.1:1", "unix:/tmp/x", "a" * 300 + ":1")), g),
    })


def _assert_clean(tally, wf) -> None:
    summary = tally.summary()
    print(wf.dumps(summary))
    assert summary["server_alive"], "the server process ended during the test:\n" + tally.server_log_tail()
    assert not tally.bad, tally.report()
    # The server process's RSS (its peak over the test, sampled and, on Linux, the kernel's VmHWM).
    assert tally.rss_peak_mb - tally.rss_start_mb < RSS_PEAK_BUDGET_MB, summary


def _call(orchestrator, method: str, payload: bytes):
    if method.endswith("/WatchRun"):
        return orchestrator.call(orchestrator.caller.unary_stream(method, payload, timeout=10))
    return orchestrator.call(orchestrator.caller.unary(method, payload))


def test_start_run(orchestrator, wf, fz, tally, profile) -> None:
    method = API + "StartRun"
    strategy = fuzzer(wf).message(orchestrator_pb2.StartRunRequest.DESCRIPTOR)

    def body(req) -> None:
        out = _call(orchestrator, method, req.SerializeToString())
        tally.record(method, out, wf.DOCUMENTED[method], req)

    fz.run_cases(fz.cases(profile, 50, 0.35), strategy, body, profile=profile)
    _assert_clean(tally, wf)


def test_runs_and_registry(orchestrator, wf, fz, tally, profile) -> None:
    f = fuzzer(wf)
    methods = {
        "GetRun": orchestrator_pb2.GetRunRequest, "WatchRun": orchestrator_pb2.WatchRunRequest,
        "StopRun": orchestrator_pb2.StopRunRequest, "RegisterNode": orchestrator_pb2.RegisterNodeRequest,
        "ListNodes": orchestrator_pb2.ListNodesRequest, "RemoveNode": orchestrator_pb2.RemoveNodeRequest,
    }
    strategy = st.sampled_from(sorted(methods)).flatmap(
        lambda m: st.tuples(st.just(API + m), f.message(methods[m].DESCRIPTOR)))

    def body(case) -> None:
        method, req = case
        out = _call(orchestrator, method, req.SerializeToString())
        tally.record(method, out, wf.DOCUMENTED[method], req)

    fz.run_cases(fz.cases(profile, 50, 0.4), strategy, body, profile=profile)
    _assert_clean(tally, wf)


def test_raw_bytes(orchestrator, wf, fz, tally, profile) -> None:
    f = fuzzer(wf)
    methods = {
        "StartRun": orchestrator_pb2.StartRunRequest, "GetRun": orchestrator_pb2.GetRunRequest,
        "WatchRun": orchestrator_pb2.WatchRunRequest, "StopRun": orchestrator_pb2.StopRunRequest,
        "RegisterNode": orchestrator_pb2.RegisterNodeRequest, "ListNodes": orchestrator_pb2.ListNodesRequest,
        "RemoveNode": orchestrator_pb2.RemoveNodeRequest,
    }
    strategy = st.sampled_from(sorted(methods)).flatmap(
        lambda m: st.tuples(st.just(API + m), wf.raw_payloads(f.message(methods[m].DESCRIPTOR))))

    def body(case) -> None:
        method, payload = case
        out = _call(orchestrator, method, payload)
        tally.record(f"raw {method}", out, wf.DOCUMENTED[method] | wf.RAW_EXTRA, case)

    fz.run_cases(fz.cases(profile, 30, 0.25), strategy, body, profile=profile)
    _assert_clean(tally, wf)
