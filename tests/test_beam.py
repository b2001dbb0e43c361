"""Beam search: exactly the best sequences when the beam holds them all, the textbook algorithm when it prunes,
greedy at width 1, stop strings and the length penalty as documented."""

import itertools

import jax
import numpy as np
import pytest

import charlm_jax
from charlm_jax.errors import CharLMError
from charlm_jax.model.charlstm import CharLSTM, init_params
from charlm_jax.use.beam import beam_ids, beam_search
from charlm_jax.use.stops import STOPPED

VOCAB = 6
PROMPT = np.array([1, 4, 2], np.int32)


@pytest.fixture(scope="module")
def model_and_params():
    model = CharLSTM(vocab_size=VOCAB, hidden_size=8)
    params = init_params(jax.random.key(1), model, 8)
    return model, jax.tree.map(lambda p: p * 2.0, params)  # sharper, so sequences differ clearly


def sequence_log_prob(model, params, continuations: np.ndarray) -> np.ndarray:
    """log p(continuation | PROMPT) of each row (n, length), read whole by the model (no incremental state)."""
    text = np.concatenate([np.broadcast_to(PROMPT, (len(continuations), len(PROMPT))), continuations], axis=1)
    _, logits = model.apply({"params": params}, text)
    log_probs = np.asarray(jax.nn.log_softmax(logits, axis=-1), np.float64)
    positions = np.arange(len(PROMPT) - 1, text.shape[1] - 1)
    return log_probs[np.arange(len(text))[:, None], positions[None, :], continuations].sum(axis=1)


def test_a_beam_holding_every_sequence_returns_the_exhaustive_best(model_and_params):
    model, params = model_and_params
    length = 3
    every = np.array(list(itertools.product(range(VOCAB), repeat=length)), np.int32)  # 216 sequences
    exact = sequence_log_prob(model, params, every)
    best = np.argsort(-exact, kind="stable")[:10]
    ids, scores, ends, _ = beam_ids(params, PROMPT, None, 0.0, model=model, beam=VOCAB ** (length - 1), length=length)
    np.testing.assert_array_equal(np.asarray(ids)[:10], every[best])
    np.testing.assert_allclose(np.asarray(scores)[:10], exact[best], rtol=1e-5)
    assert (np.asarray(ends) == length).all()


def reference_beam(model, params, beam: int, length: int) -> list[tuple[float, list[int]]]:
    """The textbook beam search, one hypothesis at a time, each scored by reading it whole."""
    hypotheses = [(0.0, [])]
    for _ in range(length):
        grown = [h + [v] for _, h in hypotheses for v in range(VOCAB)]
        scores = sequence_log_prob(model, params, np.array(grown, np.int32))
        keep = np.argsort(-scores, kind="stable")[:beam]
        hypotheses = [(scores[i], grown[i]) for i in keep]
    return hypotheses


@pytest.mark.parametrize("beam", [2, 3, 5])
def test_a_narrow_beam_is_the_textbook_search(model_and_params, beam):
    model, params = model_and_params
    ids, scores, _, _ = beam_ids(params, PROMPT, None, 0.0, model=model, beam=beam, length=6)
    expected = reference_beam(model, params, beam, 6)
    assert [list(row) for row in np.asarray(ids)] == [h for _, h in expected]
    np.testing.assert_allclose(np.asarray(scores), [s for s, _ in expected], rtol=1e-5)


def test_width_one_is_greedy_and_stops_end_hypotheses(trained_run):
    lm = charlm_jax.load(trained_run[0])
    (only,) = beam_search(lm, "the ", beam=1, length=40)
    assert only.text == charlm_jax.generate(lm, "the ", temperatures=(0.0,), length=40)[0]
    ranked = beam_search(lm, "the ", beam=6, length=40, stop=(" ", "."), length_penalty=1.0)
    for hypothesis in ranked:
        assert hypothesis.text.endswith((" ", ".")) == (hypothesis.length < 40)
        assert len(hypothesis.text) == hypothesis.length
        np.testing.assert_allclose(hypothesis.score, hypothesis.log2p / hypothesis.length, rtol=1e-5)
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    raw = beam_search(lm, "the ", beam=6, length=40, stop=(" ", "."))
    assert [h.score for h in raw] == [h.log2p for h in raw]


def test_done_hypotheses_keep_their_score_and_emit_stopped(model_and_params):
    model, params = model_and_params
    stop = np.array([[3]], np.int32)  # the id 3 ends a hypothesis
    ids, scores, ends, _ = beam_ids(params, PROMPT, stop, 0.0, model=model, beam=8, length=5)
    ids, ends = np.asarray(ids), np.asarray(ends)
    for row, end in zip(ids, ends):
        assert (row[end:] == STOPPED).all() and (row[:end] != STOPPED).all()
        assert (end == 5) or row[end - 1] == 3
    finite = np.isfinite(np.asarray(scores))
    cut = [row[:end] for row, end in zip(ids, ends)]
    exact = [sequence_log_prob(model, params, np.array([c], np.int32))[0] for c in cut]
    np.testing.assert_allclose(np.asarray(scores)[finite], np.asarray(exact)[finite], rtol=1e-5)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"beam": 0}, "beam must be an integer"), ({"beam": 1000}, "from 1 to 256"), ({"length_penalty": -1}, ">= 0")],
)
def test_bad_beam_arguments_are_one_line_errors(trained_run, kwargs, fragment):
    lm = charlm_jax.load(trained_run[0])
    with pytest.raises(CharLMError, match=fragment):
        beam_search(lm, "the ", **kwargs)
