"""Every router kind: weight invariants, fusion, training (mor vs static), prototypes, state, registry."""
from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from services.common.config.run import ROUTER_KINDS, FanoutSection, RouterSection
from services.common.config.variants import ROUTERS
from services.common.data import PreferencePair
from services.common.text_encoder import EMBEDDER
from services.orchestrator.calibration import NodeCalibration
from services.orchestrator.embedding import PromptEmbedder
from services.orchestrator.fanout import RewardFanout
from services.orchestrator.fusion import ScoredRouterPairs, UnknownRouter, build_router
from services.orchestrator.fusion.trainer import fused_pair_margin, router_margin, score_router_pairs
from services.reward_node.client import NodeInfo, NodeLimitsInfo

NAN = float("nan")
T, F = True, False
IDS = ("a", "b", "c")
KINDS = ("mean", "min", "max", "single:b", "static", "mor", "prototype")
ROOT = Path(__file__).resolve().parents[2]


def make_info(node: str, prototype: list[float] | None = None, embedder: str = EMBEDDER) -> NodeInfo:
    return NodeInfo(node_id=node, rm_kind="bt_light", objectives=[], score_mean=0.0, score_std=1.0, model_version="1",
                    limits=NodeLimitsInfo(64, 4096, 4096, 1 << 20, ["image/png"], 64), serving_state="serving",
                    prototype=prototype, prototype_embedder=embedder if prototype else "")


INFOS = {"a": make_info("a", [1.0, 0.0, 0.0, 0.0]), "b": make_info("b", [0.0, 1.0, 0.0, 0.0]), "c": make_info("c")}


def router(kind: str, dim: int = 6, seed: int = 0, **cfg: object):
    return build_router(kind, IDS, RouterSection(**cfg), feature_dim=dim, infos=INFOS, seed=seed)


def clusters(n: int = 240, seed: int = 0) -> tuple[ScoredRouterPairs, torch.Tensor]:
    """Cluster A (feature 0 high): node a judges right, node b wrong; cluster B: the reverse; node c is noise."""
    g = torch.Generator().manual_seed(seed)
    is_a = torch.arange(n) % 2 == 0
    feats = torch.randn(n, 6, generator=g) * 0.3
    feats[is_a, 0] += 2.0
    feats[~is_a, 1] += 2.0
    sign = torch.where(is_a, 1.0, -1.0)
    margin = torch.stack([sign, -sign, torch.randn(n, generator=g) * 0.1]) * 1.5 + torch.randn(3, n, generator=g) * 0.3
    base = torch.randn(3, n, generator=g)
    mask = torch.ones(3, n, dtype=torch.bool)
    return ScoredRouterPairs(feats, base + margin / 2, base - margin / 2, mask), is_a


# ---- weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_weights_sum_to_one_over_available_nodes_and_are_zero_elsewhere(kind: str) -> None:
    r = router(kind)
    available = torch.tensor([T, T, F])

    w = r.weights(torch.randn(5, 6, generator=torch.Generator().manual_seed(1)), available)

    assert w.shape == (5, 3)
    assert (w[:, 2] == 0).all() and (w >= 0).all()
    assert_close(w.sum(1), torch.ones(5))


def test_single_picks_its_node_and_has_no_reward_while_it_is_down() -> None:
    r = router("single:b")
    z = torch.tensor([[1.0, 2.0], [5.0, 6.0], [9.0, 9.0]])
    mask = torch.ones(3, 2, dtype=torch.bool)
    feats, index = torch.zeros(1, 6), torch.tensor([0, 0])

    fused, w = r.fuse(z, mask, index, feats)
    down, w_down = r.fuse(z, torch.tensor([[T, T], [F, F], [T, T]]), index, feats)

    assert_close(fused, torch.tensor([5.0, 6.0]))
    assert w.tolist() == [[0.0, 1.0, 0.0]]
    assert torch.isnan(down).all() and (w_down == 0).all()


def test_mean_renormalises_per_response_over_the_nodes_that_scored_it() -> None:
    z = torch.tensor([[0.0, 3.0, NAN, NAN], [3.0, NAN, NAN, 1.0], [6.0, 6.0, NAN, 1.0]])
    mask = torch.tensor([[T, T, F, F], [T, F, F, T], [T, T, F, T]])
    index = torch.tensor([0, 0, 1, 1])

    fused, w = router("mean").fuse(z, mask, index, torch.zeros(2, 6))

    assert_close(fused, torch.tensor([3.0, 4.5, NAN, 1.0]), equal_nan=True)
    # prompt 0: mean of [1/3, 1/3, 1/3] and [1/2, 0, 1/2]; prompt 1: its unscored response does not count
    assert_close(w, torch.tensor([[5 / 12, 1 / 6, 5 / 12], [0.0, 0.5, 0.5]]))


@pytest.mark.parametrize(("kind", "fused", "share"), [
    ("min", [1.0, 0.0, -2.0], [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    ("max", [4.0, 5.0, 3.0], [[0.0, 0.5, 0.5], [1.0, 0.0, 0.0]]),
])
def test_min_and_max_pick_a_node_per_response_and_report_selection_shares(kind, fused, share) -> None:
    z = torch.tensor([[1.0, 0.0, 3.0], [2.0, 5.0, NAN], [4.0, 1.0, -2.0]])
    mask = torch.tensor([[T, T, T], [T, T, F], [T, T, T]])

    r, w = router(kind).fuse(z, mask, torch.tensor([0, 0, 1]), torch.zeros(2, 6))

    assert_close(r, torch.tensor(fused))
    assert_close(w, torch.tensor(share))


def test_fuse_checks_shapes() -> None:
    with pytest.raises(ValueError, match="K=3"):
        router("mean").fuse(torch.zeros(2, 4), torch.ones(2, 4, dtype=torch.bool), torch.zeros(4, dtype=torch.long),
                            torch.zeros(1, 6))


# ---- training -----------------------------------------------------------------------------------

def test_mor_learns_input_dependent_weights_while_static_learns_one_global_weight() -> None:
    data, is_a = clusters()
    mor, static = router("mor", train_steps=200), router("static", train_steps=200)
    every = torch.ones(3, dtype=torch.bool)

    mor_report, static_report = mor.fit(data), static.fit(data)
    w_mor, w_static = mor.weights(data.features, every), static.weights(data.features, every)

    assert w_mor[is_a, 0].mean() > 0.8 and w_mor[~is_a, 1].mean() > 0.8
    assert_close(w_static, w_static[:1].expand_as(w_static))  # the same row for every input
    assert mor_report["heldout_accuracy"] > 0.9 > static_report["heldout_accuracy"] + 0.2
    # nodes a and b cancel in the plain mean; the untrained mor router is that mean
    assert mor_report["heldout_mean_accuracy"] < 0.7
    assert mor_report["heldout_mean_accuracy"] == mor_report["initial_heldout_accuracy"]
    assert mor_report["heldout_pairs"] == 48 and mor_report["train_pairs"] == 192


def test_fused_pair_margin_agrees_with_the_logit_margin_and_handles_per_response_routers() -> None:
    data, _ = clusters(40)
    mor = router("mor", train_steps=50)
    mor.fit(data)
    assert_close(fused_pair_margin(mor, data), router_margin(mor, data).detach())

    z_c = torch.tensor([[2.0, 0.0], [0.0, NAN], [1.0, 5.0]])
    z_r = torch.tensor([[0.0, 1.0], [3.0, NAN], [1.0, 2.0]])
    pairs = ScoredRouterPairs(torch.zeros(2, 6), z_c, z_r, torch.tensor([[T, T], [T, F], [T, T]]))
    assert_close(fused_pair_margin(router("mean"), pairs), torch.tensor([-1 / 3, (-1 + 3) / 2]))
    assert_close(fused_pair_margin(router("max"), pairs), torch.tensor([2 - 3.0, 5 - 2.0]))
    assert_close(fused_pair_margin(router("single:b"), pairs), torch.tensor([-3.0, 0.0]))  # b did not score pair 2: a tie


def test_untrained_mor_is_the_uniform_mean_and_training_is_deterministic() -> None:
    data, _ = clusters(80)
    every = torch.ones(3, dtype=torch.bool)
    untrained = router("mor", train_steps=30)

    w0 = untrained.weights(data.features, every)
    untrained.fit(data)
    twin = router("mor", train_steps=30)
    twin.fit(data)

    assert_close(w0, torch.full((80, 3), 1 / 3))
    assert_close(untrained.weights(data.features, every), twin.weights(data.features, every), rtol=0, atol=0)


def test_training_respects_pairs_a_node_did_not_score() -> None:
    data, _ = clusters(60)
    mask = data.mask.clone()
    mask[0] = False  # node a scored nothing: its (right) margins must not be learned from
    r = router("static", train_steps=100)

    r.fit(ScoredRouterPairs(data.features, data.z_chosen, data.z_rejected, mask))
    logits = r.net.logits.detach()

    assert logits[0] == 0.0  # masked out of every pair: no gradient ever reached it
    assert logits[1] != 0.0 and logits[2] != 0.0


# ---- prototype ----------------------------------------------------------------------------------

def test_prototype_routes_by_similarity_and_gives_nodes_without_one_the_mean() -> None:
    r = router("prototype", prototype_temperature=1.0)
    feats = torch.tensor([[2.0, 0.0, 0.0, 0.0, 9.0, 9.0], [0.0, 1.0, 0.0, 0.0, -9.0, 0.0]])

    w = r.weights(feats, torch.ones(3, dtype=torch.bool))

    # cos sims: row 0 -> a 1, b 0, c mean 0.5; row 1 -> a 0, b 1, c 0.5 (extra dims are not text)
    assert_close(w, torch.softmax(torch.tensor([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]), dim=1))
    assert r.fit(ScoredRouterPairs(feats, torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(3, 2, dtype=torch.bool))) == {}


def test_prototype_ignores_other_embedders_and_falls_back_to_uniform() -> None:
    infos = {"a": make_info("a", [1.0, 0.0], embedder="other/model"), "b": make_info("b"), "c": make_info("c")}
    r = build_router("prototype", IDS, RouterSection(), feature_dim=6, infos=infos)

    w = r.weights(torch.tensor([[1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]), torch.tensor([T, T, F]))

    assert_close(w, torch.tensor([[0.5, 0.5, 0.0]]))


# ---- state, registry, node sets -----------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_state_dict_round_trip_gives_identical_weights(kind: str) -> None:
    data, _ = clusters(60)
    trained = router(kind, train_steps=20)
    trained.fit(data)
    buf = io.BytesIO()
    torch.save(trained.state_dict(), buf)
    buf.seek(0)

    fresh = build_router(kind, IDS, RouterSection(), feature_dim=6, infos=None, seed=7)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    every = torch.ones(3, dtype=torch.bool)

    assert_close(fresh.weights(data.features, every), trained.weights(data.features, every), rtol=0, atol=0)


def test_state_of_another_router_is_refused() -> None:
    with pytest.raises(ValueError, match="static"):
        router("mor").load_state_dict(router("static").state_dict())


@pytest.mark.parametrize("kind", ["median", "single", "mean:a", "mor2"])
def test_unknown_kind_lists_the_supported_ones(kind: str) -> None:
    with pytest.raises(UnknownRouter) as err:
        router(kind)

    assert all(k in str(err.value) for k in ("mean", "min", "max", "single:<node_id>", "static", "mor", "prototype"))
    assert set(ROUTERS) == {"mean", "min", "max", "single", "static", "mor", "prototype", "oracle"}
    assert set(ROUTERS) == set(ROUTER_KINDS) | {"single"}


def test_oracle_routes_each_prompt_to_its_home_node_and_falls_back_to_the_mean() -> None:
    r = router("oracle", homes={"shapes": "a", "charts": "b"})
    z = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0], [-1.0, -2.0, -3.0, -4.0]])
    every = torch.ones(3, 4, dtype=torch.bool)
    idx = torch.tensor([0, 1, 2, 3])
    feats = torch.zeros(4, 6)

    fused, w = r.fuse(z, every, idx, feats, domains=["shapes", "charts", "digits", "charts"])
    # charts' home b is down for the step: the others share its prompts.
    b_down = every.clone()
    b_down[1] = False
    fused_down, _ = r.fuse(z, b_down, idx, feats, domains=["shapes", "charts", "digits", "charts"])

    assert_close(fused, torch.tensor([1.0, 20.0, (3.0 + 30.0 - 3.0) / 3, 40.0]))
    assert_close(w[0], torch.tensor([1.0, 0.0, 0.0]))
    assert_close(fused_down[1], torch.tensor(0.0))  # mean of a=2 and c=-2
    assert_close(fused_down[0], torch.tensor(1.0))
    # Without domain labels it cannot route: the uniform mean.
    assert_close(r.fuse(z, every, idx, feats)[0], z.mean(0))


@pytest.mark.parametrize("kind", KINDS)
def test_every_router_takes_domain_labels_as_the_run_passes_them(kind: str) -> None:
    r = router(kind)
    z = torch.randn(3, 4, generator=torch.Generator().manual_seed(3))
    every = torch.ones(3, 4, dtype=torch.bool)
    idx = torch.tensor([0, 0, 1, 1])

    fused, _ = r.fuse(z, every, idx, torch.zeros(2, 6), domains=["shapes", "charts"])

    assert_close(fused, r.fuse(z, every, idx, torch.zeros(2, 6))[0])


def test_oracle_needs_homes_among_its_nodes() -> None:
    with pytest.raises(ValueError, match="router.homes"):
        RouterSection(kind="oracle")
    with pytest.raises(ValueError, match="zz"):
        router("oracle", homes={"shapes": "zz"})


def test_single_needs_a_known_node() -> None:
    with pytest.raises(ValueError, match="no such node"):
        router("single:zz")


def test_align_maps_another_node_order_masking_unknown_rows() -> None:
    r = router("mean")
    z = torch.tensor([[1.0], [2.0]])

    z2, m2 = r.align(("c", "a"), z, torch.ones(2, 1, dtype=torch.bool))

    assert_close(z2, torch.tensor([[2.0], [NAN], [1.0]]), equal_nan=True)
    assert m2.tolist() == [[True], [False], [True]]


def test_domain_modules_do_not_import_grpc() -> None:
    code = ("import sys\nimport services.orchestrator.fusion, services.orchestrator.calibration, "
            "services.orchestrator.rewards, services.orchestrator.embedding\n"
            "sys.exit(1 if 'grpc' in sys.modules else 0)")

    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


# ---- router pairs through the fan-out ------------------------------------------------------------

class FakeWorld:
    def image_bytes(self, rel: str) -> bytes:
        buf = io.BytesIO()
        self.load_image(rel).save(buf, format="PNG")
        return buf.getvalue()

    def load_image(self, rel: str) -> Image.Image:
        return Image.new("RGB", (8, 8), (250, 0, 0) if "red" in rel else (0, 0, 250))


class FakeEncoder:
    dim = 4

    def encode(self, texts):
        return torch.tensor([[float(len(t)), 1.0, 0.0, 0.0] for t in texts])


def pair(i: int, chosen: str, rejected: str) -> PreferencePair:
    return PreferencePair(id=f"p{i}", client="server", benchmark="shapes", image=f"img/{'red' if i % 2 else 'blue'}.png",
                          question=f"question {i}?", chosen=chosen, rejected=rejected, example_id=f"e{i}")


def test_score_router_pairs_scores_each_pair_as_a_group_of_two_on_every_node(arun, nodes) -> None:
    pairs = [pair(0, "three", "4"), pair(1, "a red one", "blue"), pair(2, "x", "yy")]

    async def scenario() -> ScoredRouterPairs:
        fns = {"ca": lambda p, r: float(len(r)), "cb": lambda p, r: -float(len(r))}
        async with nodes(fns) as running:
            async with RewardFanout([n.endpoint() for n in running], FanoutSection()) as fan:
                cal = NodeCalibration(fan.node_ids, fan.infos, RouterSection())
                embedder = PromptEmbedder(FakeEncoder())
                return await score_router_pairs(fan, cal, embedder, pairs, FakeWorld(), pairs_per_round=2)

    data = arun(scenario())

    lengths_c = torch.tensor([len(p.chosen) for p in pairs], dtype=torch.float32)
    lengths_r = torch.tensor([len(p.rejected) for p in pairs], dtype=torch.float32)
    assert_close(data.z_chosen, torch.stack([lengths_c, -lengths_c]))  # fake nodes publish mean 0, std 1
    assert_close(data.z_rejected, torch.stack([lengths_r, -lengths_r]))
    assert data.mask.all() and data.features.shape == (3, 4 + PromptEmbedder(FakeEncoder()).image_dim)
    assert_close(data.features[:, 0], torch.tensor([len(p.question) for p in pairs], dtype=torch.float32))


DOMAINS = {
    "shapes": ["How many circles are in the picture?", "How many red triangles are there?",
               "What colour is the largest square?", "How many shapes are blue?"],
    "charts": ["What is the value of bar C in the chart?", "Which bar in the chart is the tallest?",
               "What is the difference between bars A and B?", "How high is the lowest bar?"],
}
QUERIES = {"shapes": "How many green circles can you see?", "charts": "Which bar of the chart has the smallest value?"}



def test_prototype_router_routes_real_prompts_through_published_prototypes(arun, nodes, embedder) -> None:
    protos = {node: embedder.encoder.encode(prompts).mean(0) for node, prompts in DOMAINS.items()}

    async def scenario() -> dict:
        async with nodes({"shapes": lambda p, r: 0.0, "charts": lambda p, r: 0.0}, prototypes=protos) as running:
            async with RewardFanout([n.endpoint() for n in running], FanoutSection()) as fan:
                return dict(fan.infos)

    infos = arun(scenario())
    r = build_router("prototype", list(DOMAINS), RouterSection(), feature_dim=embedder.dim, infos=infos)
    w = r.weights(embedder.embed(list(QUERIES.values()), [None, None]), torch.ones(2, dtype=torch.bool))

    assert infos["shapes"].prototype_embedder == EMBEDDER
    assert_close(torch.tensor(infos["charts"].prototype), protos["charts"])
    assert w[0, 0] > 0.7 and w[1, 1] > 0.7  # each query goes to its own domain's node
