"""VLM.generate / sequence_logprobs: grouping, no vision tokens, log-prob agreement, seeding."""
from __future__ import annotations

import contextlib

import pytest
import torch


@contextlib.contextmanager
def boosted(vlm, ids, amount=50.0):
    """Add ``amount`` to the lm-head logits of ``ids`` (makes a random model prefer them)."""
    idx = torch.tensor(sorted(ids))

    def hook(_module, _inputs, output):
        output = output.clone()
        output[..., idx] += amount
        return output

    handle = vlm.model.get_output_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_generate_groups_answers_per_question(tiny_vlm, questions, images):
    out = tiny_vlm.generate(questions, images, num_return_sequences=3, max_new_tokens=5, seed=0)
    assert len(out) == len(questions) and all(len(g) == 3 for g in out)
    for group in out:
        for g in group:
            assert 1 <= len(g.token_ids) <= 5
            assert len(g.logprobs) == len(g.token_ids)
            assert all(lp <= 0.0 for lp in g.logprobs)
            assert g.finish_reason in ("stop", "length")
            assert isinstance(g.text, str)


def test_never_emits_image_or_vision_tokens_at_high_temperature(tiny_vlm, questions, images):
    banned = set(tiny_vlm.suppress_ids)
    assert {tiny_vlm.processor.image_token_id, 3, 4, 5, 7} <= banned  # vision start/end, image pads
    out = tiny_vlm.generate(questions, images, num_return_sequences=8, max_new_tokens=32, temperature=5.0, seed=1)
    tokens = [t for group in out for g in group for t in g.token_ids]
    assert len(tokens) > 500
    assert not banned & set(tokens)


def test_suppression_holds_even_when_the_model_prefers_vision_tokens(tiny_vlm, questions, images):
    banned = set(tiny_vlm.suppress_ids)
    with boosted(tiny_vlm, banned):
        out = tiny_vlm.generate(questions, images, num_return_sequences=4, max_new_tokens=8, seed=2)
        greedy = tiny_vlm.generate(questions, images, max_new_tokens=8, do_sample=False)
    tokens = [t for res in (out, greedy) for group in res for g in group for t in g.token_ids]
    assert tokens and not banned & set(tokens)


def test_eos_ends_a_generation_with_reason_stop(tiny_vlm, questions, images):
    eos = tiny_vlm.processor.eos_id
    with boosted(tiny_vlm, {eos}):
        out = tiny_vlm.generate(questions, images, max_new_tokens=8, seed=3)
    for (g,) in out:
        assert g.finish_reason == "stop"
        assert g.token_ids == [eos] and g.text == ""
        assert g.logprobs[0] == pytest.approx(0.0, abs=1e-4)


def test_max_new_tokens_gives_reason_length(tiny_vlm, questions, images):
    with boosted(tiny_vlm, {tiny_vlm.processor.eos_id}, amount=-1e4):
        out = tiny_vlm.generate(questions, images, max_new_tokens=4, seed=4)
    assert all(g.finish_reason == "length" and len(g.token_ids) == 4 for (g,) in out)


def test_seed_reproduces_samples_and_leaves_the_global_rng_alone(tiny_vlm, questions, images):
    torch.manual_seed(0)
    expected = torch.rand(2)
    torch.manual_seed(0)
    a = tiny_vlm.generate(questions, images, num_return_sequences=2, max_new_tokens=8, seed=11)
    assert torch.equal(torch.rand(2), expected)
    b = tiny_vlm.generate(questions, images, num_return_sequences=2, max_new_tokens=8, seed=11)
    c = tiny_vlm.generate(questions, images, num_return_sequences=2, max_new_tokens=8, seed=12)
    ids = lambda res: [g.token_ids for group in res for g in group]  # noqa: E731
    assert ids(a) == ids(b)
    assert ids(a) != ids(c)


def test_greedy_is_deterministic_and_picks_the_argmax(tiny_vlm, questions, images):
    a = tiny_vlm.generate(questions, images, max_new_tokens=6, do_sample=False)
    b = tiny_vlm.generate(questions, images, max_new_tokens=6, do_sample=False)
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]
    comps = [g[0].token_ids for g in a]
    with torch.no_grad():
        lps = tiny_vlm.sequence_logprobs(questions, images, comps)
    for lp, g in zip(lps, a, strict=True):
        torch.testing.assert_close(lp, torch.tensor(g[0].logprobs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_recomputed_logprobs_match_generation(tiny_vlm, questions, images, temperature):
    n = 4
    out = tiny_vlm.generate(questions, images, num_return_sequences=n, max_new_tokens=12, temperature=temperature, seed=5)
    flat = [g for group in out for g in group]
    qs = [q for q in questions for _ in range(n)]
    ims = [im for im in images for _ in range(n)]
    with torch.no_grad():
        lps = tiny_vlm.sequence_logprobs(qs, ims, [g.token_ids for g in flat], temperature=temperature)
    assert len(lps) == len(flat)
    worst = max((lp - torch.tensor(g.logprobs)).abs().max().item() for lp, g in zip(lps, flat, strict=True))
    assert worst < 1e-4
    assert all(lp.shape == (len(g.token_ids),) for lp, g in zip(lps, flat, strict=True))


def test_logprobs_do_not_depend_on_batch_company(tiny_vlm, questions, images):
    comps = [[310, 311, 2], [400], [500, 501, 502, 503, 504], [2]]
    with torch.no_grad():
        together = tiny_vlm.sequence_logprobs(questions, images, comps)
        alone = [tiny_vlm.sequence_logprobs([q], [im], [c])[0] for q, im, c in zip(questions, images, comps, strict=True)]
        chunked = tiny_vlm.sequence_logprobs(questions, images, comps, batch_size=3)
    for a, b, c in zip(together, alone, chunked, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=0)


def test_sequence_logprobs_keep_the_graph(tiny_vlm, questions, images):
    lps = tiny_vlm.sequence_logprobs(questions[:1], images[:1], [[300, 301, 2]])
    assert lps[0].requires_grad
    tiny_vlm.model.zero_grad(set_to_none=True)
    lps[0].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_vlm.model.parameters())
    tiny_vlm.model.zero_grad(set_to_none=True)


def test_num_parameters_counts_tied_weights_once(tiny_vlm):
    assert tiny_vlm.num_parameters() == sum(p.numel() for p in tiny_vlm.model.parameters())
    assert tiny_vlm.num_parameters(trainable_only=True) == tiny_vlm.num_parameters()
