"""The GRPO trainer on the tiny Qwen2-VL (and LLaVA) model, on CPU: rollouts come from vlm.generate."""
from __future__ import annotations

import pytest
import torch
from PIL import Image
from pydantic import ValidationError
from torch.testing import assert_close

from services.common.config.run import GRPOSection
from services.common.models.config import ModelConfig
from services.common.models.factory import build_vlm
from services.common.models.vlm import VLM
from services.orchestrator.grpo import GRPOTrainer, RolloutBatch, group_advantages
from services.orchestrator.grpo.ops import adaptive_beta

G = 3
MAX_NEW = 6
REWARDS = [0.0, 1.0, 2.0, 1.0, 1.0, 1.0, 5.0, 0.0, 2.0]  # the middle group has no spread
# peft asks transformers a deprecated question on every get_peft_model: noise, not a finding.
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")
QUESTIONS = ["What colour is the shape?", "How many circles are there?", "Which bar is the tallest?"]


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fresh_vlm(arch: str = "qwen2_vl") -> VLM:
    """The initial policy; build_vlm is deterministic, so every call gives the same weights."""
    return build_vlm(ModelConfig(arch=arch, preset="tiny", seed=0))


def grpo_cfg(**over) -> GRPOSection:
    base = dict(group_size=G, prompts_per_step=len(QUESTIONS), max_new_tokens=MAX_NEW, lr=1e-2,
                lora_rank=4, lora_alpha=8.0, beta=0.04)
    return GRPOSection(**(base | over))


def make_rollouts(vlm: VLM, rewards: list[float] = REWARDS, scale: str = "group") -> RolloutBatch:
    images = [Image.new("RGB", (64, 64), (220, 30, 30)), Image.new("RGB", (64, 64), (30, 60, 220)), None]
    out = vlm.generate(QUESTIONS, images, num_return_sequences=G, max_new_tokens=MAX_NEW, seed=1)
    flat = [g for group in out for g in group]
    # Shorter completions exercise the masks: a prefix keeps its sampled log-probs.
    keep = [MAX_NEW - (i % 3) for i in range(len(flat))]
    return RolloutBatch(
        questions=[q for q in QUESTIONS for _ in range(G)],
        images=[im for im in images for _ in range(G)],
        completion_ids=[g.token_ids[:k] for g, k in zip(flat, keep, strict=True)],
        old_logprobs=[g.logprobs[:k] for g, k in zip(flat, keep, strict=True)],
        advantages=group_advantages(torch.tensor(rewards), G, scale),
    )


@pytest.fixture(scope="module")
def rollouts() -> RolloutBatch:
    """Sampled once from the initial policy (which a fresh LoRA trainer's policy equals: lora_B = 0)."""
    return make_rollouts(fresh_vlm())


def params_of(trainer: GRPOTrainer, trainable: bool = True) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in trainer.policy.model.named_parameters() if p.requires_grad == trainable}


def policy_logprobs(trainer: GRPOTrainer, batch: RolloutBatch) -> list[torch.Tensor]:
    with torch.no_grad():
        return trainer.policy.sequence_logprobs(batch.questions, batch.images, batch.completion_ids)


# ---- one step -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loss_type", "scale"), [("grpo", "group"), ("bnpo", "batch"), ("dr_grpo", "none"), ("dapo", "group")]
)
def test_one_step_moves_every_lora_b_and_nothing_else(rollouts, loss_type, scale):
    batch = make_rollouts(fresh_vlm(), scale=scale) if scale != "group" else rollouts
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg(loss_type=loss_type, scale_rewards=scale, micro_batch_size=4))
    before, frozen = params_of(trainer), params_of(trainer, trainable=False)

    stats = trainer.step(batch)

    after = params_of(trainer)
    lora_b = [n for n in after if "lora_B" in n]
    assert lora_b and all("lora_" in n for n in after)
    assert [n for n in lora_b if torch.equal(after[n], before[n])] == []
    # lora_A's gradient is proportional to lora_B, which starts at 0: it only moves from step two.
    assert torch.isfinite(torch.tensor([stats.loss, stats.grad_norm])).all()
    assert stats.skipped_passes == 0 and stats.grad_norm > 0
    assert all(torch.equal(p, frozen[n]) for n, p in params_of(trainer, trainable=False).items())


def test_lora_wraps_only_the_language_model_projections():
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg())

    wrapped = {n.split(".lora_A")[0] for n in params_of(trainer) if ".lora_A" in n}

    assert all(".language_model." in n for n in wrapped)
    assert {n.rsplit(".", 1)[-1] for n in wrapped} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                       "up_proj", "down_proj"}


def test_first_pass_is_on_policy(rollouts):
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg())

    stats = trainer.step(rollouts)

    # generate's log-probs equal the recomputed ones: ratio 1, nothing clipped, policy == reference
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-4)
    assert stats.clip_low == 0.0 and stats.clip_high == 0.0
    assert stats.kl == pytest.approx(0.0, abs=1e-6)
    assert stats.completion_tokens_mean == pytest.approx(sum(len(c) for c in rollouts.completion_ids) / 9)


def test_kl_grows_and_the_reference_stays_fixed(rollouts):
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg())
    ref_before = trainer.reference_logprobs(rollouts.questions, rollouts.images, rollouts.completion_ids)
    policy_before = policy_logprobs(trainer, rollouts)

    kls = [trainer.step(rollouts).kl for _ in range(3)]

    with torch.no_grad(), trainer.policy.adapter_disabled():
        ref_after = trainer.policy.sequence_logprobs(rollouts.questions, rollouts.images, rollouts.completion_ids)
    assert kls[0] < 1e-6 < kls[1] < kls[2]
    for b, a in zip(ref_before, ref_after, strict=True):
        assert_close(a, b, atol=1e-6, rtol=0)
    moved = [(a - b).abs().max() for a, b in zip(policy_logprobs(trainer, rollouts), policy_before, strict=True)]
    assert max(moved) > 1e-3


def test_positive_advantage_raises_that_completions_logprob(rollouts):
    target = 4
    adv = torch.zeros(len(rollouts.completion_ids))
    adv[target] = 1.0
    batch = RolloutBatch(rollouts.questions, rollouts.images, rollouts.completion_ids, rollouts.old_logprobs, adv)
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg(beta=0.0))
    before = policy_logprobs(trainer, batch)[target].sum()

    for _ in range(3):
        trainer.step(batch)

    assert policy_logprobs(trainer, batch)[target].sum() > before + 0.1


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_micro_batches_accumulate_to_the_whole_batch(rollouts, loss_type):
    whole = GRPOTrainer(fresh_vlm(), grpo_cfg(loss_type=loss_type)).step(rollouts)
    micro = GRPOTrainer(fresh_vlm(), grpo_cfg(loss_type=loss_type, micro_batch_size=2)).step(rollouts)

    assert micro.loss == pytest.approx(whole.loss, rel=1e-5, abs=1e-7)
    assert micro.grad_norm == pytest.approx(whole.grad_norm, rel=1e-5)


def test_several_epochs_step_several_times(rollouts):
    one = GRPOTrainer(fresh_vlm(), grpo_cfg())
    two = GRPOTrainer(fresh_vlm(), grpo_cfg(epochs=2))

    one.step(rollouts)
    stats = two.step(rollouts)

    state = two.optimizer.state_dict()["state"]
    assert all(int(s["step"]) == 2 for s in state.values())
    assert stats.ratio_mean != pytest.approx(1.0, abs=1e-7)  # the second pass is off-policy
    assert any(not torch.equal(a, b) for a, b in zip(params_of(one).values(), params_of(two).values(), strict=True))


# ---- full fine-tuning, other architectures -----------------------------------------------------------


def test_full_finetuning_trains_all_weights_against_a_frozen_copy(rollouts):
    from services.common.weights_codec import WeightsHeader, sha256_hex
    from services.policy_sampler.weights import prepare_full

    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg(lora=False, lr=1e-3))
    before = params_of(trainer)
    ref_before = trainer.reference_logprobs(rollouts.questions, rollouts.images, rollouts.completion_ids)

    stats = [trainer.step(rollouts) for _ in range(2)]

    after = params_of(trainer)
    lm = [n for n in after if ".language_model." in n]
    assert lm and all(not torch.equal(after[n], before[n]) for n in lm)
    assert stats[0].kl == pytest.approx(0.0, abs=1e-6) and stats[1].kl > 1e-6
    ref_after = trainer.reference_logprobs(rollouts.questions, rollouts.images, rollouts.completion_ids)
    for b, a in zip(ref_before, ref_after, strict=True):
        assert_close(a, b, atol=0, rtol=0)
    kind, payload, config_json = trainer.weights_payload()
    header = WeightsHeader(version=1, kind="full", total_bytes=len(payload), sha256=sha256_hex(payload))
    update = prepare_full(header, payload, fresh_vlm().model, torch.float32)
    assert (kind, config_json) == ("full", "")
    assert set(update.tensors) == set(after)
    assert all(torch.equal(update.tensors[n], after[n]) for n in lm)


def test_llava_trains_with_the_same_targets():
    vlm = fresh_vlm("llava")
    batch = make_rollouts(vlm)
    trainer = GRPOTrainer(vlm, grpo_cfg())
    before = params_of(trainer)

    stats = trainer.step(batch)

    wrapped = {n.split(".lora_A")[0] for n in before if ".lora_A" in n}
    assert len(wrapped) == 14 and all(".language_model." in n for n in wrapped)
    assert stats.ratio_mean == pytest.approx(1.0, abs=1e-4)
    assert all(not torch.equal(p, before[n]) for n, p in params_of(trainer).items() if "lora_B" in n)


# ---- state and weights out ----------------------------------------------------------------------------


@pytest.mark.parametrize("lora", [True, False])
def test_state_dict_round_trip_continues_identically(rollouts, lora):
    cfg = grpo_cfg(lora=lora, lr=1e-3, micro_batch_size=4)
    straight = GRPOTrainer(fresh_vlm(), cfg)
    for _ in range(3):
        want = straight.step(rollouts)
    first = GRPOTrainer(fresh_vlm(), cfg)
    for _ in range(2):
        first.step(rollouts)
    state = first.state_dict()
    first.step(rollouts)  # training on must not change the saved state

    resumed = GRPOTrainer(fresh_vlm(), cfg)
    resumed.load_state_dict(state)
    got = resumed.step(rollouts)

    assert resumed.steps_done == 3
    assert got.loss == pytest.approx(want.loss, abs=1e-6)
    for (n, a), b in zip(params_of(straight).items(), params_of(resumed).values(), strict=True):
        assert_close(b, a, atol=1e-6, rtol=0, msg=n)


def test_state_of_another_layout_is_refused():
    state = GRPOTrainer(fresh_vlm(), grpo_cfg()).state_dict()

    with pytest.raises(ValueError, match="'lora' training"):
        GRPOTrainer(fresh_vlm(), grpo_cfg(lora=False)).load_state_dict(state)
    with pytest.raises(ValueError, match="does not match the trained parameters"):
        GRPOTrainer(fresh_vlm(), grpo_cfg(lora_target_modules=r".*language_model.*\.(q_proj|v_proj)")).load_state_dict(state)
    with pytest.raises(ValueError, match="wrong shape"):
        GRPOTrainer(fresh_vlm(), grpo_cfg(lora_rank=8)).load_state_dict(state)


def test_lora_payload_rebuilds_the_policy_on_a_fresh_model(rollouts):
    from peft import get_peft_model, set_peft_model_state_dict

    from services.common.weights_codec import WeightsHeader, sha256_hex
    from services.policy_sampler.weights import parse_lora_config, prepare_lora

    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg())
    for _ in range(2):
        trainer.step(rollouts)

    kind, payload, config_json = trainer.weights_payload()

    assert kind == "lora"
    config, _ = parse_lora_config(config_json)
    header = WeightsHeader(version=2, kind="lora", total_bytes=len(payload), sha256=sha256_hex(payload),
                           adapter_config_json=config_json)
    served = fresh_vlm()
    update = prepare_lora(header, payload, served.model.config, torch.float32)
    peft_model = get_peft_model(served.model, config)
    set_peft_model_state_dict(peft_model, update.tensors)
    sampler_policy = VLM(peft_model, served.tokenizer, served.image_processor)
    with torch.no_grad():
        got = sampler_policy.sequence_logprobs(rollouts.questions, rollouts.images, rollouts.completion_ids)
    for a, b in zip(got, policy_logprobs(trainer, rollouts), strict=True):
        assert_close(a, b, atol=1e-6, rtol=0)


# ---- set-up and input checks ---------------------------------------------------------------------------


def test_lora_init_is_seeded():
    a = params_of(GRPOTrainer(fresh_vlm(), grpo_cfg(), seed=5))
    b = params_of(GRPOTrainer(fresh_vlm(), grpo_cfg(), seed=5))
    c = params_of(GRPOTrainer(fresh_vlm(), grpo_cfg(), seed=6))

    lora_a = [n for n in a if "lora_A" in n]
    assert all(torch.equal(a[n], b[n]) for n in lora_a)
    assert any(not torch.equal(a[n], c[n]) for n in lora_a)


def test_a_group_of_one_is_refused_by_the_config():
    with pytest.raises(ValidationError, match="group_size"):
        GRPOSection(group_size=1)


def test_rollout_batches_are_checked(rollouts):
    r = rollouts
    with pytest.raises(ValueError, match="differ in length"):
        RolloutBatch(r.questions[:-1], r.images, r.completion_ids, r.old_logprobs, r.advantages)
    with pytest.raises(ValueError, match="log-probs"):
        RolloutBatch(r.questions, r.images, r.completion_ids, [lp[:-1] for lp in r.old_logprobs], r.advantages)
    with pytest.raises(ValueError, match="NaN"):
        RolloutBatch(r.questions, r.images, r.completion_ids, r.old_logprobs, torch.full((9,), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        RolloutBatch(r.questions, r.images, r.completion_ids, r.old_logprobs, torch.zeros(8))
    with pytest.raises(ValueError, match="max_new_tokens=4"):
        GRPOTrainer(fresh_vlm(), grpo_cfg(max_new_tokens=4)).step(r)


def test_a_non_finite_gradient_skips_the_update(rollouts):
    r = rollouts
    broken = [list(lp) for lp in r.old_logprobs]
    broken[0][0] = float("nan")
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg())
    before = params_of(trainer)

    stats = trainer.step(RolloutBatch(r.questions, r.images, r.completion_ids, broken, r.advantages))

    assert stats.skipped_passes == 1
    assert all(torch.equal(p, before[n]) for n, p in params_of(trainer).items())


def test_a_peft_wrapped_model_is_refused():
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg())

    with pytest.raises(ValueError, match="plain"):
        GRPOTrainer(trainer.policy, grpo_cfg())


def test_the_adapted_kl_coefficient_is_part_of_the_state():
    trainer = GRPOTrainer(fresh_vlm(), grpo_cfg(beta=0.04))
    trainer.beta = 0.05  # what the adaptive controller (grpo.target_kl) would have set
    state = trainer.state_dict()
    again = GRPOTrainer(fresh_vlm(), grpo_cfg(beta=0.04))
    again.load_state_dict(state)
    assert again.beta == 0.05


def test_a_step_trains_with_beta_then_adapts_it_towards_the_target_kl(rollouts):
    fixed = GRPOTrainer(fresh_vlm(), grpo_cfg(beta=0.04))
    adaptive = GRPOTrainer(fresh_vlm(), grpo_cfg(beta=0.04, target_kl=0.01, kl_horizon=2))

    a, b = fixed.step(rollouts), adaptive.step(rollouts)

    assert a.beta == b.beta == 0.04 and fixed.beta == 0.04  # without target_kl beta stays
    adapted = adaptive.beta
    assert adapted == adaptive_beta(0.04, b.kl, 0.01, 2) != 0.04
    assert adaptive.step(rollouts).beta == adapted  # the next step trains with the adapted beta
