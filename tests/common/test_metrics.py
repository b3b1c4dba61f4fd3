"""Metric naming invariants and the /metrics, /livez, /readyz side server."""

from __future__ import annotations

import asyncio
import re
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics import MetricWrapperBase

from services.common import metrics
from services.common.config import ConfigError, MetricsSection

NAME_RE = re.compile(rf"^mor_({'|'.join(metrics.SERVICES)})_[a-z][a-z0-9_]*_({'|'.join(metrics.UNITS)})$")
NON_BASE_UNITS = re.compile(r"_(ms|millis|milliseconds|us|minutes|hours|kb|mb|gb|kib|mib|gib|percent)(_|$)")


def _families():
    return [f for f in metrics.REGISTRY.collect() if not f.name.startswith(metrics.STANDARD_PREFIXES)]


def test_registry_holds_the_declared_metrics() -> None:
    names = {f.name for f in _families()}

    assert {"mor_grpc_server_requests", "mor_grpc_server_latency_seconds", "mor_grpc_server_in_flight_requests"} <= names


def test_every_metric_follows_the_naming_rule() -> None:
    bad = [f.name for f in _families() if not NAME_RE.match(f.name) or NON_BASE_UNITS.search(f.name) or "__" in f.name]

    assert bad == []


def test_counters_are_declared_without_total_and_durations_are_seconds_histograms() -> None:
    counters = [f.name for f in _families() if f.type == "counter"]
    timing = [f for f in _families() if re.search(r"(latency|duration|time)", f.name)]

    assert counters and not [n for n in counters if n.endswith("_total")]
    assert all(f.name.endswith("_seconds") and f.type == "histogram" for f in timing)


def _declared():
    return {v._name: v for v in vars(metrics).values() if isinstance(v, MetricWrapperBase)}  # noqa: SLF001


def test_every_exported_family_is_declared_at_module_level() -> None:
    assert {f.name for f in _families()} == set(_declared())


def test_labels_come_from_the_small_fixed_set() -> None:
    labels = {name: set(metric._labelnames) for name, metric in _declared().items()}  # noqa: SLF001

    assert {name: ls for name, ls in labels.items() if not ls <= metrics.ALLOWED_LABELS} == {}


def test_naming_rule_catches_a_bad_name() -> None:
    registry = CollectorRegistry()
    Counter("mor_reward_node_latency_ms", "bad unit", registry=registry)

    (family,) = list(registry.collect())

    assert not NAME_RE.match(family.name) or NON_BASE_UNITS.search(family.name)


def _get(port: int, path: str, method: str = "GET") -> tuple[int, bytes, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read(), resp.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        return err.code, err.read(), err.headers.get("Content-Type", "")


def test_side_server_serves_probes_and_metrics() -> None:
    state = {"ready": False}

    async def scenario() -> dict[str, object]:
        server, port = await metrics.start_metrics_server(MetricsSection(port=0), lambda: state["ready"])
        assert server is not None and port == server.port and port > 0
        try:
            seen: dict[str, object] = {}
            seen["livez"] = (await asyncio.to_thread(_get, port, "/livez"))[0]
            seen["readyz_before"] = (await asyncio.to_thread(_get, port, "/readyz"))[0]
            state["ready"] = True
            seen["readyz_after"] = (await asyncio.to_thread(_get, port, "/readyz?verbose=1"))[0]
            status, body, ctype = await asyncio.to_thread(_get, port, "/metrics")
            seen["metrics"] = (status, b"# TYPE mor_grpc_server_requests_total counter" in body, ctype.startswith("text/plain"))
            seen["missing"] = (await asyncio.to_thread(_get, port, "/nope"))[0]
            seen["post"] = (await asyncio.to_thread(_get, port, "/livez", "POST"))[0]
            seen["head"] = (await asyncio.to_thread(_get, port, "/livez", "HEAD"))[:2]
        finally:
            await server.stop()
        seen["serving_after_stop"] = server.serving
        return seen

    seen = asyncio.run(asyncio.wait_for(scenario(), 20))

    assert seen == {
        "livez": 200,
        "readyz_before": 503,
        "readyz_after": 200,
        "metrics": (200, True, True),
        "missing": 404,
        "post": 405,
        "head": (200, b""),
        "serving_after_stop": False,
    }


def test_a_raising_readiness_check_reads_as_not_ready() -> None:
    def broken() -> bool:
        raise RuntimeError("model handle gone")

    async def scenario() -> int:
        server, port = await metrics.start_metrics_server(MetricsSection(port=0), broken)
        try:
            return (await asyncio.to_thread(_get, port, "/readyz"))[0]
        finally:
            await server.stop()

    assert asyncio.run(asyncio.wait_for(scenario(), 20)) == 503


def test_disabled_section_starts_nothing() -> None:
    result = asyncio.run(metrics.start_metrics_server(MetricsSection(enabled=False), lambda: True))

    assert result == (None, None)


def test_busy_port_is_a_config_error_naming_the_field() -> None:
    async def scenario() -> None:
        first, port = await metrics.start_metrics_server(MetricsSection(port=0), lambda: True)
        try:
            with pytest.raises(ConfigError, match=r"^metrics\.port"):
                await metrics.start_metrics_server(MetricsSection(port=port), lambda: True)
        finally:
            await first.stop()

    asyncio.run(asyncio.wait_for(scenario(), 20))
