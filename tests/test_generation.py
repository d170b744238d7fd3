"""Generation beyond top-k: nucleus (top-p) sampling checked against a numpy computation of the
nucleus, and streaming (GPT.stream) that yields the tokens of generate one step at a time, through
the KV cache."""
from __future__ import annotations

import numpy as np
import pytest

import tinygpt
from tinygpt import Tensor
from tinygpt.nn import GPT

PROMPT = [[3, 1, 4, 1, 5]]


def numpy_nucleus(logits: np.ndarray, temperature: float, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """The smallest set of the likeliest tokens whose probability reaches top_p, and its renormalised
    probabilities (Holtzman et al. 2019), computed directly in float64."""
    scaled = logits.astype(np.float64) / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs, kind="stable")
    size = int(np.searchsorted(np.cumsum(probs[order]), top_p) + 1)
    nucleus = order[:size]
    return nucleus, probs[nucleus] / probs[nucleus].sum()


@pytest.mark.parametrize("temperature, top_p", [(1.0, 0.5), (0.7, 0.9), (2.0, 0.3)])
def test_top_p_samples_the_nucleus_with_its_renormalised_probabilities(small_gpt, temperature, top_p):
    logits = small_gpt(Tensor(PROMPT)).numpy()[0, -1]
    nucleus, probs = numpy_nucleus(logits, temperature, top_p)
    assert 2 <= len(nucleus) < 50, "the test needs a nucleus that is neither one token nor everything"
    draws = 4000
    ids = small_gpt.generate(Tensor(np.repeat(PROMPT, draws, axis=0)), 1, temperature=temperature, top_p=top_p,
                         rng=np.random.default_rng(0)).numpy()[:, -1]
    assert set(ids.tolist()) <= set(nucleus.tolist())
    frequencies = np.array([(ids == token).mean() for token in nucleus])
    sigma = np.sqrt(probs * (1 - probs) / draws)
    assert np.all(np.abs(frequencies - probs) <= 5 * sigma + 1e-12), (frequencies, probs)


def test_top_p_one_changes_nothing(small_gpt):
    prompt = Tensor(np.repeat(PROMPT, 3, axis=0))
    plain = small_gpt.generate(prompt, 12, temperature=1.3, rng=np.random.default_rng(5)).numpy()
    nucleus = small_gpt.generate(prompt, 12, temperature=1.3, top_p=1.0, rng=np.random.default_rng(5)).numpy()
    np.testing.assert_array_equal(plain, nucleus)


def test_a_tiny_top_p_is_greedy(small_gpt):
    sampled = small_gpt.generate(Tensor(PROMPT), 20, temperature=1.0, top_p=1e-9, rng=np.random.default_rng(1)).numpy()
    np.testing.assert_array_equal(sampled, small_gpt.generate_uncached(Tensor(PROMPT), 20).numpy())


def test_top_p_applies_after_top_k(small_gpt):
    logits = small_gpt(Tensor(PROMPT)).numpy()[0, -1]
    top3 = np.argsort(logits)[-3:]
    ids = small_gpt.generate(Tensor(np.repeat(PROMPT, 500, axis=0)), 1, temperature=3.0, top_k=3, top_p=0.99,
                         rng=np.random.default_rng(2)).numpy()[:, -1]
    assert set(ids.tolist()) == set(top3.tolist())


@pytest.mark.parametrize("top_p", [0.0, -0.5, 1.5])
def test_top_p_outside_zero_one_is_refused(small_gpt, top_p):
    with pytest.raises(ValueError, match="top_p"):
        small_gpt.generate(Tensor(PROMPT), 2, top_p=top_p)


@pytest.mark.parametrize("new_tokens", [5, 30])
def test_stream_yields_the_tokens_of_generate(small_gpt, new_tokens):
    prompt = Tensor(np.random.default_rng(0).integers(0, 50, (2, 4)))
    generated = small_gpt.generate(prompt, new_tokens, temperature=0.9, top_k=20, top_p=0.8,
                               rng=np.random.default_rng(9)).numpy()
    streamed = list(small_gpt.stream(prompt, new_tokens, temperature=0.9, top_k=20, top_p=0.8, rng=np.random.default_rng(9)))
    assert len(streamed) == new_tokens and all(step.shape == (2,) for step in streamed)
    np.testing.assert_array_equal(np.stack([step.numpy() for step in streamed], axis=1), generated[:, 4:])


def test_stream_under_manual_seed_equals_generate(small_gpt):
    tinygpt.manual_seed(11)
    generated = small_gpt.generate(Tensor(PROMPT), 8, temperature=1.0).numpy()[0, 5:]
    tinygpt.manual_seed(11)
    assert [step.item() for step in small_gpt.stream(Tensor(PROMPT), 8, temperature=1.0)] == generated.tolist()


def test_stream_is_lazy_and_feeds_one_token_per_step_through_the_cache(small_gpt, monkeypatch):
    fed_lengths = []
    forward = GPT.forward

    def recording_forward(self, token_ids, kv_cache=None):
        fed_lengths.append(token_ids.shape[1])
        return forward(self, token_ids, kv_cache)

    monkeypatch.setattr(GPT, "forward", recording_forward)
    tokens = small_gpt.stream(Tensor(PROMPT), 6, temperature=0.0)
    assert fed_lengths == []
    first = next(tokens)
    assert fed_lengths == [5] and first.shape == (1,)
    rest = list(tokens)
    assert len(rest) == 5 and fed_lengths == [5, 1, 1, 1, 1, 1]


def test_stream_past_max_seq_length_equals_uncached_greedy(small_gpt):
    prompt = Tensor(np.random.default_rng(4).integers(0, 50, (1, 10)))
    streamed = [step.item() for step in small_gpt.stream(prompt, 20, temperature=0.0)]
    assert streamed == small_gpt.generate_uncached(prompt, 20).numpy()[0, 10:].tolist()


def test_streaming_keeps_only_the_context_window(small_gpt):
    steps = small_gpt.stream(Tensor(np.zeros((1, 3), dtype=np.int32)), 5 * small_gpt.max_seq_length, temperature=0.0)
    for _ in steps:
        assert steps.gi_frame.f_locals["ids"].shape[1] <= small_gpt.max_seq_length + 1
