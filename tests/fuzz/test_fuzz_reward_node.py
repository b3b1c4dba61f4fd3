"""Fuzz of a real reward node (light RM) and its health service: every request message generated
from its descriptor, near-valid values mixed in, plus undecodable bytes. Every answer must be OK
or a status the proto documents for the method, with a bounded message; OK answers must carry one
finite score per response; the RSS of the node's process (`mor reward-node serve`) must stay
bounded."""
from __future__ import annotations

import math

from grpc_health.v1 import health_pb2
from hypothesis import strategies as st

from services.common.wire import common_pb2, reward_node_pb2

QUESTIONS = ("How many shapes are there?", "Which bar is the tallest?", "What digit is shown?", "x")
ANSWERS = ("three", "3", "B because bar B is the highest", "seven", "9, final answer", "<|image_pad|>", "🙂")
# Peak RSS growth allowed over a test: the node may hold max_pending_pixels (4 x 4096^2 pixels,
# about 200 MB decoded) plus the model's activations; the image bomb took it past 4 GB.
RSS_PEAK_BUDGET_MB = 768


def valid_image(wf):
    named = wf.images()
    return st.sampled_from(wf.VALID_IMAGES).map(
        lambda n: common_pb2.Image(data=named[n], mime_type="image/jpeg" if n.startswith("jpeg") else "image/png"))


def valid_score(wf):
    """Score requests the node accepts: a question, 1-4 answers, an optional valid image."""
    return st.builds(lambda p, rs, img, parts: reward_node_pb2.ScoreRequest(prompt=p, responses=rs, image=img,
                                                                           return_parts=parts),
                     st.sampled_from(QUESTIONS), st.lists(st.sampled_from(ANSWERS), min_size=1, max_size=4),
                     st.none() | valid_image(wf), st.booleans())


def valid_group(wf):
    return valid_score(wf).map(lambda r: reward_node_pb2.ScoreGroup(group_id="g", prompt=r.prompt, responses=r.responses,
                                                                    image=r.image if r.HasField("image") else None))


def fuzzer(wf):
    answers = st.lists(st.one_of(st.sampled_from(ANSWERS), wf.texts()), min_size=1, max_size=4)
    image = wf.image_message_values().map(lambda d: common_pb2.Image(**d))
    return wf.Fuzzer({
        "mor.v1.Image": lambda g: st.one_of(g, image),
        "mor.v1.ScoreRequest.prompt": lambda g: st.one_of(st.sampled_from(QUESTIONS), g),
        "mor.v1.ScoreGroup.prompt": lambda g: st.one_of(st.sampled_from(QUESTIONS), g),
        "mor.v1.ScoreRequest.responses": lambda g: st.one_of(answers, g),
        "mor.v1.ScoreGroup.responses": lambda g: st.one_of(answers, g),
    })


def _check_scores(n_expected: list[int], scores_of: list[list[float]]) -> str | None:
    if [len(s) for s in scores_of] != n_expected:
        return f"OK with {[len(s) for s in scores_of]} scores for {n_expected} responses"
    if not all(math.isfinite(x) for s in scores_of for x in s):
        return "OK with a non-finite score"
    return None


def _assert_clean(tally, wf) -> None:
    summary = tally.summary()
    print(wf.dumps(summary))
    assert summary["server_alive"], "the server process ended during the test:\n" + tally.server_log_tail()
    assert not tally.bad, tally.report()
    # The server process's RSS (its peak over the test, sampled and, on Linux, the kernel's VmHWM).
    assert tally.rss_peak_mb - tally.rss_start_mb < RSS_PEAK_BUDGET_MB, summary


def test_score(reward_node, wf, fz, tally, profile) -> None:
    method = "/mor.v1.RewardNode/Score"
    f = fuzzer(wf)
    desc = reward_node_pb2.ScoreRequest.DESCRIPTOR
    strategy = st.one_of(f.near(desc, valid_score(wf)), f.message(desc))

    def body(req) -> None:
        out = reward_node.call(reward_node.caller.unary(method, req.SerializeToString()))

        def ok(data: bytes) -> str | None:
            resp = reward_node_pb2.ScoreResponse.FromString(data)
            return _check_scores([len(req.responses)], [[s.overall for s in resp.scores]])

        tally.record(method, out, wf.DOCUMENTED[method], req, ok)

    fz.run_cases(fz.cases(profile, 60, 0.4), strategy, body, profile=profile)
    _assert_clean(tally, wf)
    assert tally.codes[method]["OK"] > 0, "no case reached the model"


def test_score_batch(reward_node, wf, fz, tally, profile) -> None:
    method = "/mor.v1.RewardNode/ScoreBatch"
    f = fuzzer(wf)
    gdesc = reward_node_pb2.ScoreGroup.DESCRIPTOR
    group = st.one_of(f.message(gdesc, depth=1), f.near(gdesc, valid_group(wf), depth=1), valid_group(wf))
    batch = st.lists(group, min_size=1, max_size=6) | st.lists(valid_group(wf), min_size=60, max_size=70)
    strategy = st.one_of(f.message(reward_node_pb2.ScoreBatchRequest.DESCRIPTOR),
                         batch.map(lambda gs: reward_node_pb2.ScoreBatchRequest(groups=gs)))

    def body(req) -> None:
        out = reward_node.call(reward_node.caller.unary(method, req.SerializeToString()))

        def ok(data: bytes) -> str | None:
            resp = reward_node_pb2.ScoreBatchResponse.FromString(data)
            if [g.group_id for g in resp.groups] != [g.group_id for g in req.groups]:
                return "OK with groups out of order"
            return _check_scores([len(g.responses) for g in req.groups],
                                 [[s.overall for s in g.scores] for g in resp.groups])

        tally.record(method, out, wf.DOCUMENTED[method], req, ok)

    fz.run_cases(fz.cases(profile, 40, 0.3), strategy, body, profile=profile)
    _assert_clean(tally, wf)


def test_get_info_and_health(reward_node, wf, fz, tally, profile) -> None:
    f = fuzzer(wf)
    info = "/mor.v1.RewardNode/GetInfo"
    health = "/grpc.health.v1.Health/Check"
    names = st.one_of(st.sampled_from(("", "mor.v1.RewardNode", "mor.v1.PolicySampler", "grpc.health.v1.Health")),
                      wf.texts())
    strategy = st.one_of(
        f.message(reward_node_pb2.RewardNodeGetInfoRequest.DESCRIPTOR).map(lambda m: (info, m.SerializeToString())),
        names.map(lambda n: (health, health_pb2.HealthCheckRequest(service=n).SerializeToString())),
    )

    def body(case) -> None:
        method, payload = case
        out = reward_node.call(reward_node.caller.unary(method, payload))
        tally.record(method, out, wf.DOCUMENTED[method], case)

    fz.run_cases(fz.cases(profile, 20, 0.1), strategy, body, profile=profile)
    _assert_clean(tally, wf)


def test_raw_bytes(reward_node, wf, fz, tally, profile) -> None:
    """Bytes that may not parse as the method's request: INVALID_ARGUMENT (or, when they happen to
    parse, whatever the method documents), never UNKNOWN."""
    f = fuzzer(wf)
    methods = {
        "/mor.v1.RewardNode/Score": reward_node_pb2.ScoreRequest,
        "/mor.v1.RewardNode/ScoreBatch": reward_node_pb2.ScoreBatchRequest,
        "/mor.v1.RewardNode/GetInfo": reward_node_pb2.RewardNodeGetInfoRequest,
        "/grpc.health.v1.Health/Check": health_pb2.HealthCheckRequest,
    }
    strategy = st.sampled_from(sorted(methods)).flatmap(
        lambda m: st.tuples(st.just(m), wf.raw_payloads(f.message(methods[m].DESCRIPTOR))))

    def body(case) -> None:
        method, payload = case
        out = reward_node.call(reward_node.caller.unary(method, payload))
        tally.record(f"raw {method}", out, wf.DOCUMENTED[method] | wf.RAW_EXTRA, case)

    fz.run_cases(fz.cases(profile, 40, 0.2), strategy, body, profile=profile)
    _assert_clean(tally, wf)
