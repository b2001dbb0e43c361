"""Generation: one jitted scan that equals the book's per-character loop, compiled once; streaming
gives the same text; repetition controls do what they say."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import charlm_jax
from charlm_jax.errors import CharLMError
from charlm_jax.model.charlstm import CharLSTM, init_params
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.use.decode import (
    DecodeState,
    _empty_history,
    _ngram_bans,
    _push,
    generate_ids,
    stream_chunk,
    stream_start,
)
from charlm_jax.use.sampling import sample

VOCAB, MAXLEN = 11, 8


@pytest.fixture(scope="module")
def model_and_params():
    model = CharLSTM(vocab_size=VOCAB, hidden_size=16)
    params = init_params(jax.random.key(0), model, MAXLEN)
    # Sharpen the random model so samples at different temperatures differ visibly.
    params = jax.tree.map(lambda p: p * 3.0, params)
    return model, params


def step_key(key, row: int, step: int):
    """The documented stream of random numbers: row r's step t draws from fold_in(fold_in(key, r), t)."""
    return jax.random.fold_in(jax.random.fold_in(key, row), step)


def draw_rows(key, step: int, logits, temperatures) -> np.ndarray:
    """One id per row, each row sampled alone from its own key (the book's sample, one row at a time)."""
    return np.array(
        [int(sample(step_key(key, row, step), logits[row], temperatures[row])) for row in range(len(temperatures))]
    )


def book_window_loop(model, params, key, prompt, temperatures, length):
    """The book's loop: re-read the last maxlen characters every step, one model call per character."""
    texts = [list(prompt) for _ in temperatures]
    for t in range(length):
        window = np.array([text[-MAXLEN:] for text in texts])
        _, logits = model.apply({"params": params}, jnp.asarray(window), last_only=True)
        for text, i in zip(texts, draw_rows(key, t, logits, temperatures)):
            text.append(int(i))
    return np.array([text[len(prompt) :] for text in texts])


def stateful_loop(model, params, key, prompt, temperatures, length):
    """What a user would write with a carried state: Python loop, one step per character."""
    batch = len(temperatures)
    carries, logits = model.apply(
        {"params": params}, jnp.asarray([prompt] * batch), model.zero_carries(batch), last_only=True
    )
    out = []
    for t in range(length):
        ids = draw_rows(key, t, logits, temperatures)
        out.append(ids)
        carries, logits = model.apply({"params": params}, jnp.asarray(ids)[:, None], carries, last_only=True)
    return np.stack(out, axis=1)


def run(params, model, key, prompts, temperatures, first_row=0, **options):
    """generate_ids with its options built from keywords, as numpy."""
    prompts = jnp.asarray(prompts, jnp.int32)
    return np.asarray(
        generate_ids(
            params,
            key,
            prompts,
            GenerationOptions(temperatures=temperatures, **options),
            first_row,
            model=model,
            maxlen=MAXLEN,
        )
    )


def random_prompt(length: int) -> list[int]:
    return list(np.random.default_rng(length).integers(0, VOCAB, length))


REFERENCE_LOOPS = {  # mode -> (Python re-implementation, prompt, temperatures, length)
    "window, short prompt": ("window", book_window_loop, random_prompt(3), [0.2, 0.5, 1.0, 1.2], 20),
    "window, full prompt": ("window", book_window_loop, random_prompt(MAXLEN), [0.2, 0.5, 1.0, 1.2], 20),
    "window, odd prompt": ("window", book_window_loop, random_prompt(13), [0.2, 0.5, 1.0, 1.2], 20),
    "stateful": ("stateful", stateful_loop, [1, 2, 3, 4, 5], [0.0, 0.5, 1.0], 30),
}


@pytest.mark.parametrize("case", list(REFERENCE_LOOPS))
def test_each_mode_equals_its_python_loop_exactly(model_and_params, case):
    """window: the book's loop (re-read the last maxlen ids from a zero state); stateful: carry the state."""
    mode, reference, prompt, temps, length = REFERENCE_LOOPS[case]
    model, params = model_and_params
    key = jax.random.key(7)
    expected = reference(model, params, key, prompt, temps, length)
    got = run(params, model, key, [prompt] * len(temps), temps, length=length, mode=mode)
    np.testing.assert_array_equal(got, expected)


def test_modes_agree_while_the_text_fits_in_one_window(model_and_params):
    model, params = model_and_params
    prompt, temps, key = [[4, 2, 7]] * 4, [0.0, 0.5, 1.0, 1.2], jax.random.key(11)
    window = run(params, model, key, prompt, temps, length=MAXLEN - 3, mode="window")
    stateful = run(params, model, key, prompt, temps, length=MAXLEN - 3, mode="stateful")
    np.testing.assert_array_equal(window, stateful)


def test_same_key_same_text_other_key_other_text(model_and_params):
    model, params = model_and_params
    draw = lambda key: run(params, model, key, [[1, 2, 3]] * 2, [1.0, 1.0], length=50)  # noqa: E731
    a, b, c = draw(jax.random.key(1)), draw(jax.random.key(1)), draw(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.array_equal(a[0], a[1])  # rows draw independent noise from one key


def test_temperature_zero_is_greedy_whatever_the_key(model_and_params):
    model, params = model_and_params
    out = [run(params, model, jax.random.key(k), [[1, 2, 3]], [0.0], length=25, mode="window") for k in range(3)]
    np.testing.assert_array_equal(out[0], out[1])
    np.testing.assert_array_equal(out[0], out[2])


def test_new_temperatures_prompts_and_keys_do_not_recompile(model_and_params):
    model, params = model_and_params
    generate_ids.clear_cache()
    for i, temps in enumerate(([0.2, 0.5, 1.0, 1.2], [1.0, 1.0, 0.0, 3.0], [0.7, 0.1, 0.9, 2.0])):
        run(
            params,
            model,
            jax.random.key(i),
            np.full((4, 5), i + 1),
            temps,
            first_row=i,
            length=16,
            top_p=0.5 + 0.1 * i,
            repetition_penalty=1.1 + i,
            repetition_window=3 + i,
            no_repeat_ngram=2 + i,
        )
    assert generate_ids._cache_size() == 1


def test_a_rows_text_depends_only_on_the_seed_its_index_and_its_settings(model_and_params):
    """Not on the other rows, the batch size, the length asked for, or how the steps are grouped."""
    model, params = model_and_params
    key, prompt, temps = jax.random.key(5), [3, 1, 4, 1], [0.2, 0.5, 1.0, 1.2]
    together = run(params, model, key, [prompt] * 4, temps, length=40, top_k=6, repetition_penalty=1.2)
    for row, temperature in enumerate(temps):
        alone = run(
            params, model, key, [prompt], [temperature], first_row=row, length=40, top_k=6, repetition_penalty=1.2
        )
        np.testing.assert_array_equal(alone[0], together[row])
    shorter = run(params, model, key, [prompt] * 4, temps, length=25, top_k=6, repetition_penalty=1.2)
    np.testing.assert_array_equal(shorter, together[:, :25])
    options = GenerationOptions(length=40, temperatures=temps, top_k=6, repetition_penalty=1.2)
    state = stream_start(params, key, jnp.asarray([prompt] * 4), options, model=model, steps=42, maxlen=MAXLEN)
    pieces = []
    for _ in range(6):  # 6 x 7 steps, the last two thrown away
        state, ids = stream_chunk(params, state, options, model=model, count=7)
        pieces.append(np.asarray(ids))
    np.testing.assert_array_equal(np.concatenate(pieces, axis=1)[:, :40], together)


def test_unknown_mode_is_refused():
    with pytest.raises(CharLMError, match="mode must be one of"):
        GenerationOptions(length=4, mode="beam")


def ngram_bans_reference(text: list[int], n: int, vocab: int) -> np.ndarray:
    """Ids v such that text[-(n-1):] + [v] is an n-gram already in text (plain Python)."""
    banned = np.zeros(vocab, bool)
    if len(text) < n - 1:
        return banned
    tail = tuple(text[len(text) - (n - 1) :]) if n > 1 else ()
    for j in range(len(text) - n + 1):
        if tuple(text[j : j + n - 1]) == tail:
            banned[text[j + n - 1]] = True
    return banned


def pushed_state(texts: np.ndarray, options: GenerationOptions, length: int, vocab: int) -> DecodeState:
    """The decode state's history after the ids of ``texts`` (batch, count) were pushed one by one."""
    batch = texts.shape[0]
    state = DecodeState(None, None, None, None, *_empty_history(batch, length, vocab, options), None, None, None, None)
    for column in texts.T:
        state = _push(state, jnp.asarray(column, jnp.int32), options)
    return state


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("history_window", [30, 11])  # the whole text; a ring that wraps
def test_ngram_bans_equal_a_python_reference_over_the_window(n, history_window):
    rng = np.random.default_rng(n)
    length, vocab = 30, 4  # a small alphabet, so n-grams repeat often
    texts = rng.integers(0, vocab, (6, length)).astype(np.int32)
    options = GenerationOptions(length=1, temperatures=[1.0] * 6, no_repeat_ngram=n, history_window=history_window)
    for count in (0, 1, n - 1, n, 17, length):
        state = pushed_state(texts[:, :count], options, length, vocab)
        got = np.asarray(_ngram_bans(state, jnp.int32(n), vocab))
        for row in range(len(texts)):
            window = texts[row, max(0, count - history_window) : count].tolist()
            expected = ngram_bans_reference(window, n, vocab)
            np.testing.assert_array_equal(got[row], expected, err_msg=f"row {row}, count {count}")


@pytest.mark.parametrize("repetition_window,history_window", [(5, 5), (5, 12), (20, 40)])
def test_penalty_counts_equal_a_python_reference(repetition_window, history_window):
    rng = np.random.default_rng(repetition_window)
    length, vocab = 40, 6
    texts = rng.integers(0, vocab, (3, length)).astype(np.int32)
    options = GenerationOptions(
        length=1,
        temperatures=[1.0] * 3,
        repetition_penalty=1.3,
        repetition_window=repetition_window,
        history_window=history_window,
    )
    for count in (0, 1, 4, 5, 6, 23, length):
        counts = np.asarray(pushed_state(texts[:, :count], options, length, vocab).counts)
        for row in range(len(texts)):
            expected = np.bincount(texts[row, max(0, count - repetition_window) : count], minlength=vocab)
            np.testing.assert_array_equal(counts[row], expected, err_msg=f"row {row}, count {count}")


def test_greedy_with_no_repeat_ngram_never_repeats_an_ngram(model_and_params):
    model, params = model_and_params
    prompt = jnp.asarray([[1, 2, 3, 1, 2]])
    plain = run(params, model, jax.random.key(0), prompt, [0.0], length=60)[0]
    text = [1, 2, 3, 1, 2] + plain.tolist()
    assert len({tuple(text[i : i + 4]) for i in range(len(text) - 3)}) < len(text) - 3  # greedy loops without it
    for n in (2, 3, 4):
        ids = run(params, model, jax.random.key(0), prompt, [0.0], length=40, no_repeat_ngram=n)[0]
        text = [1, 2, 3, 1, 2] + ids.tolist()
        generated_ngrams = [tuple(text[i : i + n]) for i in range(len(text) - n + 1)]
        prompt_ngrams = generated_ngrams[: 5 - n + 1]  # the prompt may repeat itself; nothing after it may
        later = generated_ngrams[len(prompt_ngrams) :]
        assert len(set(later)) == len(later) and not set(later) & set(prompt_ngrams), n


STREAM_OPTIONS = (
    {},
    {"top_k": 5, "top_p": 0.9, "repetition_penalty": 1.3, "no_repeat_ngram": 4},
    {"sampler": "gumbel", "min_p": 0.05},
)
# Both modes plain and the filters in window mode by default; the other three pairs with the slow set.
STREAM_CASES = [
    (options, mode)
    if (index, mode) in {(0, "stateful"), (0, "window"), (1, "window")}
    else pytest.param(options, mode, marks=pytest.mark.slow)
    for index, options in enumerate(STREAM_OPTIONS)
    for mode in ("stateful", "window")
]


@pytest.mark.parametrize("options,mode", STREAM_CASES)
def test_streamed_text_equals_generated_text_whatever_the_chunk(trained_run, mode, options):
    lm = charlm_jax.load(trained_run[0])
    prompt = "the quick"
    whole = charlm_jax.generate(lm, prompt, length=50, temperatures=[0.8], seed=3, mode=mode, **options)[0]
    # One piece per step, a size that does not divide the length, the length, more than the length; with
    # filters and controls on, a size that does not divide it (one compile each).
    for chunk in (1, 7, 50, 64) if not options else (7,):
        pieces = list(
            charlm_jax.stream(lm, prompt, length=50, temperature=0.8, seed=3, mode=mode, chunk=chunk, **options)
        )
        assert "".join(pieces) == whole, chunk
        assert [len(p) for p in pieces] == [min(chunk, 50 - i) for i in range(0, 50, chunk)]


def test_the_public_api_compiles_once_for_new_values(trained_run):
    lm = charlm_jax.load(trained_run[0])
    compiled = (generate_ids, stream_start, stream_chunk)
    for fn in compiled:
        fn.clear_cache()
    for i, temps in enumerate(([0.2, 0.5, 1.0, 1.2], [1.0, 1.0, 0.0, 3.0], [0.7, 0.1, 0.9, 2.0])):
        charlm_jax.generate(
            lm,
            "the quic"[:8] if i % 2 else "a stitch",
            length=30,
            temperatures=temps,
            seed=i,
            top_p=0.5 + 0.1 * i,
            repetition_penalty=1.1 + i,
            repetition_window=5 + i,
            no_repeat_ngram=2 + i,
        )
        list(
            charlm_jax.stream(
                lm, "the quic", length=30, temperature=temps[0], seed=i, row=i, chunk=8, repetition_penalty=1.2 + i
            )
        )
    assert [fn._cache_size() for fn in compiled] == [1, 1, 1]


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"repetition_penalty": 0.0}, "repetition_penalty must be > 0"),
        ({"repetition_window": 0}, "repetition_window must be a positive integer"),
        ({"no_repeat_ngram": 0}, "no_repeat_ngram must be an integer from 1"),
        ({"no_repeat_ngram": 2000}, "no_repeat_ngram must be an integer from 1 to history_window"),
        (
            {"repetition_penalty": 1.2, "repetition_window": 50, "history_window": 40},
            "repetition_window 50 is longer than history_window 40",
        ),
        ({"history_window": 0}, "history_window must be a positive integer"),
        ({"sampler": "beam"}, "sampler must be one of"),
        ({"mode": "beam"}, "mode must be one of"),
        ({"temperatures": [0.5, -1.0]}, "temperature must be >= 0"),
        ({"length": 0}, "length must be a positive integer"),
        ({"top_k": 1.5}, "top_k must be a positive integer"),
        ({"beam_width": 4}, "unknown generation option(s) ['beam_width']"),
    ],
)
def test_bad_generation_options_are_one_line_errors(trained_run, kwargs, fragment):
    lm = charlm_jax.load(trained_run[0])
    kwargs = {"length": 5, **kwargs}
    with pytest.raises(CharLMError, match=re.escape(fragment)):
        charlm_jax.generate(lm, "the", **kwargs)
    if "temperatures" not in kwargs:
        with pytest.raises(CharLMError, match=re.escape(fragment)):
            next(iter(charlm_jax.stream(lm, "the", temperature=0.5, **kwargs)))


def first_stop(text: str, prompt: str, stops: tuple[str, ...]) -> str:
    """The generated ``text`` cut just after the first place where prompt + text ends with a stop string (a
    stop may begin in the prompt), or whole."""
    whole = prompt + text
    for end in range(len(prompt) + 1, len(whole) + 1):
        if whole[:end].endswith(stops):
            return whole[len(prompt) : end]
    return text


@pytest.mark.parametrize("mode", ["stateful", "window"])
@pytest.mark.parametrize("extra", [{}, {"repetition_penalty": 1.3, "no_repeat_ngram": 4, "top_p": 0.9}])
def test_a_stop_string_ends_a_row_where_it_is_first_completed(trained_run, mode, extra):
    lm = charlm_jax.load(trained_run[0])
    temperatures = (0.3, 1.0, 1.5, 2.0)
    for stops in (("e",), ("th", "o"), (" the",), ("zzz",), ("s. a",)):
        options = dict(length=120, temperatures=temperatures, mode=mode, **extra)
        plain = charlm_jax.generate(lm, "a stitch in t", seed=5, **options)
        stopped = charlm_jax.generate(lm, "a stitch in t", seed=5, stop=stops, **options)
        assert stopped == [first_stop(text, "a stitch in t", stops) for text in plain], stops
        for row, temperature in enumerate(temperatures):  # streaming stops at the same place
            pieces = charlm_jax.stream(
                lm, "a stitch in t", seed=5, row=row, chunk=7, stop=stops, **{**options, "temperatures": (temperature,)}
            )
            assert "".join(pieces) == stopped[row]


def test_once_every_row_stopped_the_scan_ends(trained_run):
    """A stop every row meets at once: the rest of the ids are STOPPED, and streaming asks for no further chunk
    (that the whole call's scan ends early too is a cost, measured by benchmarks/decoding.py)."""
    from charlm_jax.use.decode import sample_in_chunks
    from charlm_jax.use.stops import STOPPED

    lm = charlm_jax.load(trained_run[0])
    prompt = np.asarray(lm.encode_prompt("the "))[None, :]
    first = charlm_jax.generate(lm, "the ", temperatures=(0.0,), length=1)[0]  # what greedy writes first

    def encoded(temperatures):
        options = GenerationOptions(length=400, temperatures=temperatures, stop=(first,))
        return options.with_stop_ids(lambda text: lm.vocab.encode(text))

    ids = np.asarray(generate_ids(lm.params, 3, prompt.repeat(2, 0), encoded((0.0, 0.0)), model=lm.model, maxlen=12))
    assert (ids[:, 0] >= 0).all() and (ids[:, 1:] == STOPPED).all()
    pieces = sample_in_chunks(lm.params, 3, prompt, encoded((0.0,)), model=lm.model, maxlen=12, chunk=10)
    chunks = list(pieces)
    assert len(chunks) == 1


@pytest.mark.parametrize(
    "stop, fragment",
    [
        (("",), "non-empty strings"),
        (("x" * 65,), "at most 64"),
        (tuple("abcdefghijklmnopq"), "up to 16"),
        ((3,), "strings"),
    ],
)
def test_bad_stop_strings_are_one_line_errors(stop, fragment):
    with pytest.raises(CharLMError, match=fragment):
        GenerationOptions(stop=stop)


def test_a_stop_string_the_model_cannot_write_is_refused(trained_run):
    lm = charlm_jax.load(trained_run[0])
    with pytest.raises(CharLMError, match="not in the model's vocabulary"):
        charlm_jax.generate(lm, "the ", stop=("Ω",), length=5)
