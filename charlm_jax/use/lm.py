"""The Python API for researchers' scripts: load a checkpoint, generate, stream and score text.

    lm = charlm_jax.load("runs/book")
    texts = charlm_jax.generate(lm, "the meaning of ", length=400,
                                temperatures=(0.2, 0.5, 1.0, 1.2), seed=0)
    options = charlm_jax.GenerationOptions(length=400, temperatures=(0.5,), top_p=0.9)
    for piece in charlm_jax.stream(lm, "the meaning of ", options):
        print(piece, end="", flush=True)
    bits = charlm_jax.bits_per_char(lm, held_out_text)

``generate`` and ``stream`` take the decoding options as one ``GenerationOptions`` or as its
fields in keywords (converted at this edge); either way the compiled scans of ``decode`` are
called with it whole, and their caches are shared with every other caller: a second call with the
same shapes and static options compiles nothing.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jax
import numpy as np

from charlm_jax.data.prepared import PreparedCorpus, corpus_ids
from charlm_jax.data.record import TextRecord, read_recorded_text
from charlm_jax.data.windows import Vocab, prepare_text, split_windows
from charlm_jax.errors import CharLMError
from charlm_jax.model.charlstm import CharLSTM, build_model, init_params
from charlm_jax.model.scoring import SCORE_MODES, score_ids
from charlm_jax.runtime.seeds import is_plain_seed
from charlm_jax.settings.adapt import AdaptOptions, as_adapt_options
from charlm_jax.settings.config import TrainConfig
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.use.adapt import adaptive_pass, gradient_scale
from charlm_jax.use.decode import SAMPLE_CHUNK, as_key, generate_ids, sample_in_chunks
from charlm_jax.use.stops import STOPPED

# Characters per streamed piece: the smallest chunk benchmarks/bench.py measured to cost little more than one
# generate call per character (results/2026-12-02-cpu.md, the chunk table).
DEFAULT_STREAM_CHUNK = SAMPLE_CHUNK


@dataclass(frozen=True)
class LanguageModel:
    """A trained model: parameters plus everything needed to read and write its text."""

    params: dict
    vocab: Vocab
    config: TrainConfig
    default_prompt: str
    step: int = 0
    text: TextRecord | None = None  # the run's text: where it came from, its length and sha256

    @cached_property
    def model(self) -> CharLSTM:
        return build_model(self.config, self.vocab.size)

    def encode_prompt(self, prompt: str, unseen: str = "error") -> np.ndarray:
        """Prompt ids after the training text's own preprocessing (lower-casing); characters the model never
        saw refused, or left out (``unseen="skip"``, see ``Vocab.encode``)."""
        if not isinstance(prompt, str) or not prompt:
            raise CharLMError("prompt is empty: pass some text, e.g. --prompt 'the '")
        ids = self.vocab.encode(prepare_text(prompt, self.config.lowercase), what="prompt", unseen=unseen)
        if not len(ids):
            raise CharLMError("prompt has no character the model knows: pass a prompt in the training text's script")
        return ids

    @cached_property
    def _placed(self) -> dict:
        """mesh -> the parameters replicated over it (placing them is the cost a repeated call must not pay)."""
        return {}

    @cached_property
    def _adapt_scales(self) -> dict:
        """(segment, scale_batches, scale_batch) -> the ``rms`` rule's gradient scale on the run's text."""
        return {}

    def params_on(self, mesh) -> dict:
        """The parameters replicated over ``mesh``'s devices, placed once per mesh."""
        if mesh not in self._placed:
            from charlm_jax.runtime.distributed import put_global, replicated

            self._placed[mesh] = jax.tree.map(lambda x: put_global(np.asarray(x), replicated(mesh)), self.params)
        return self._placed[mesh]

    def adapt_scale(self, options: AdaptOptions):
        """The ``rms`` rule's gradient scale, measured once per setting on the run's own training text; None
        for the ``sgd`` rule, which needs none."""
        if options.rule != "rms":
            return None
        key = (options.segment, options.scale_batches, options.scale_batch)
        if key not in self._adapt_scales:
            self._adapt_scales[key] = measure_adapt_scale(self, options)
        return self._adapt_scales[key]


def with_compute_dtype(lm: LanguageModel, compute_dtype: str) -> LanguageModel:
    """The same weights computing in ``compute_dtype`` (``float32`` or ``bfloat16``): checkpoints hold
    float32 weights whatever dtype trained them, so a model scores and generates in either."""
    config = dataclasses.replace(lm.config, compute_dtype=compute_dtype)  # validated: one line if unknown
    return dataclasses.replace(lm, config=config)


def load(checkpoint_dir: str | os.PathLike, step: int | None = None) -> LanguageModel:
    """The model saved in a training run's output directory (latest intact step unless ``step``).

    A damaged newest step is skipped with a ``CheckpointFallbackWarning`` (see
    ``CheckpointStore.newest_readable``); an explicit ``step`` that cannot be read is an error.
    """
    from charlm_jax.io.checkpoint import CheckpointStore
    from charlm_jax.runtime.distributed import use_every_core

    use_every_core()

    def read(at: int) -> LanguageModel:
        meta = store.restore_meta(at)
        model = build_model(meta.config, meta.vocab.size)
        shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), model, meta.config.maxlen))
        # Onto this process's first device, whatever mesh wrote the checkpoint (several hosts' runs too).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)
        params, _ = store.restore(target, step=at)
        return LanguageModel(
            params=params,
            vocab=meta.vocab,
            config=meta.config,
            default_prompt=meta.default_prompt,
            step=meta.step,
            text=meta.text,
        )

    with CheckpointStore(checkpoint_dir, create=False) as store:
        return store.newest_readable(read, step)


def generation_options(
    options: GenerationOptions | None, settings: dict[str, Any], lm: LanguageModel | None = None
) -> GenerationOptions:
    """The options of a call: a ``GenerationOptions``, or its fields as keywords; not both. With ``lm``, its stop
    strings encoded in ``lm``'s vocabulary and, for ``no_copy_ngram``, the n-grams of its run's training text."""
    options = _options(options, settings)
    if lm is None:
        return options
    if options.no_copy_ngram is not None and options.copy_table is None:
        from charlm_jax.use.copies import training_ngram_table

        options = options.with_rows(options.temperatures, copy_table=training_ngram_table(lm, options.no_copy_ngram))
    return options.with_stop_ids(lambda text: lm.vocab.encode(prepare_text(text, lm.config.lowercase), what="stop"))


def _options(options: GenerationOptions | None, settings: dict[str, Any]) -> GenerationOptions:
    if "temperature" in settings:  # the singular spelling, for one row
        settings["temperatures"] = (settings.pop("temperature"),)
    if options is not None:
        if settings:
            raise CharLMError(
                f"pass the options either as GenerationOptions or as keywords, not both "
                f"(got {sorted(settings)} besides options=)"
            )
        return options
    try:
        return GenerationOptions(**settings)
    except TypeError:
        unknown = sorted(set(settings) - set(GenerationOptions.__dataclass_fields__))
        raise CharLMError(f"unknown generation option(s) {unknown}: see charlm_jax.GenerationOptions") from None


def generate(
    lm: LanguageModel,
    prompt: str | None = None,
    options: GenerationOptions | None = None,
    *,
    seed: int | jax.Array = 0,
    include_prompt: bool = False,
    mesh=None,
    adapt=None,
    **settings: Any,
) -> list[str]:
    """One generated string per temperature (per row of ``options``), all drawn in one jitted call.

    ``prompt`` defaults to the excerpt of training text saved in the checkpoint; it goes
    through the training preprocessing (lower-casing by default), and characters outside
    the vocabulary are refused with an error naming them (to leave them out, pass
    ``lm.vocab.decode(lm.encode_prompt(prompt, unseen="skip"))``, as ``--unseen skip`` does). A byte model's rows are its bytes decoded as UTF-8, each invalid or cut-short
    sequence one U+FFFD (``windows.BYTES_DECODE_ERRORS``). ``seed`` is an int or a
    ``jax.random`` key. ``settings``: ``GenerationOptions`` fields (``length``,
    ``temperatures``, ``mode``, ``sampler``, ``top_k``, ``top_p``, ``min_p``,
    ``repetition_penalty``, ``repetition_window``, ``no_repeat_ngram``, ``history_window``) when ``options`` is not
    given. ``adapt`` (True or a ``charlm_jax.AdaptOptions``) first reads the prompt adapting the weights
    to it (dynamic evaluation: a long prompt of an author or a code base steers the weights, not only
    the state), then generates from the adapted weights. The rows are split over ``mesh``'s devices
    (``charlm_jax.runtime.distributed.make_mesh``), by default over the CPU's cores as the CLI splits them; each row's text depends only on the seed, its index
    and its settings, not on the devices.
    """
    from charlm_jax.runtime.distributed import default_mesh, use_every_core

    use_every_core()
    options = generation_options(options, settings, lm)
    adapt_options = as_adapt_options(adapt)
    prompt = lm.default_prompt if prompt is None else prompt
    prompt_ids = lm.encode_prompt(prompt)
    prompt_rows = np.broadcast_to(prompt_ids, (options.rows, len(prompt_ids)))  # (rows, prompt)
    if adapt_options is not None:
        # Read the prompt adapting (dynamic evaluation); the rows continue from the adapted weights,
        # which read the prompt again for their state. One seed still gives one text.
        lm = dataclasses.replace(lm, params=adapted_params(lm, prompt_ids, adapt_options))
    params = lm.params
    if mesh is None:  # the rows split over the CPU's cores as the CLI splits them (rows never talk)
        mesh = default_mesh(options.rows, min_rows=1)
    if mesh is not None:
        from charlm_jax.runtime.distributed import shard_rows

        params = lm.params_on(mesh)
        prompt_rows, temperatures = shard_rows(mesh, prompt_rows, options.temperatures)
        options = options.with_rows(temperatures)
    ids = generate_ids(params, _seed(seed), prompt_rows, options, model=lm.model, maxlen=lm.config.maxlen)
    head = prompt if include_prompt else ""
    return [head + lm.vocab.decode(row[row != STOPPED]) for row in np.asarray(ids)]


def adapted_params(lm: LanguageModel, prompt_ids: np.ndarray, options: AdaptOptions) -> dict:
    """``lm``'s weights after reading ``prompt_ids`` adapting to them (dynamic evaluation): what ``generate(...,
    adapt=...)`` and the server's adapted requests generate from."""
    return adaptive_pass(lm.params, lm.model, prompt_ids, options, lm.adapt_scale(options))[1]


def stream(
    lm: LanguageModel,
    prompt: str | None = None,
    options: GenerationOptions | None = None,
    *,
    seed: int | jax.Array = 0,
    row: int = 0,
    chunk: int = DEFAULT_STREAM_CHUNK,
    **settings: Any,
) -> Iterator[str]:
    """Yield the text of one row, ``chunk`` characters at a time.

    The options must have one row (``temperature=0.5`` is accepted for ``temperatures=(0.5,)``);
    ``row`` is the index the row stands for, so ``stream(..., temperature=t, row=i)`` yields what
    ``generate`` returns in row ``i`` for the same seed, whatever ``chunk`` is. Each piece is one
    jitted call of ``chunk`` steps carrying the decoding state, compiled once. A byte model's character cut
    between two pieces is held back until it is whole, so the pieces joined are ``generate``'s text.
    """
    options = generation_options(options, settings, lm)
    if options.rows != 1:
        raise CharLMError(
            f"stream generates one row, got {options.rows} temperatures: stream each one, "
            "passing row=i to get generate's row i"
        )
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise CharLMError(f"chunk must be a positive integer, got {chunk!r}: pass e.g. --chunk {DEFAULT_STREAM_CHUNK}")
    prompt_ids = lm.encode_prompt(lm.default_prompt if prompt is None else prompt)[None, :]  # (1, prompt)
    return _stream(lm, prompt_ids, options, _seed(seed), int(row), int(chunk))


def _stream(
    lm: LanguageModel, prompt_ids: np.ndarray, options: GenerationOptions, key, row: int, chunk: int
) -> Iterator[str]:
    decode = lm.vocab.decoder()
    for ids in sample_in_chunks(
        lm.params, key, prompt_ids, options, np.int32(row), model=lm.model, maxlen=lm.config.maxlen, chunk=chunk
    ):
        if piece := decode(ids[0][ids[0] != STOPPED], False):
            yield piece
    if tail := decode(np.zeros(0, np.int32), True):
        yield tail


def _seed(seed: int | jax.Array):
    """A seed of the 32-bit range goes to the device as an int32 scalar (the key is made inside the compiled
    call); any other integer, as its key (``seeds.seed_key``), made here; a bool or a float is refused."""
    if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and is_plain_seed(int(seed)):
        return np.int32(seed)
    return as_key(seed)


def score(
    lm: LanguageModel,
    text: str | PreparedCorpus | None = None,
    mode: str = "window",
    adapt=None,
    unseen: str = "error",
) -> np.ndarray:
    """log2-probability of each scored character (byte, for a byte model) of ``text`` under the model (float64).

    ``window``: every character from position ``maxlen`` on, predicted from the ``maxlen``
    before it from a zero state (the training run's validation metric, given the held-out
    tail). ``stateful``: every character from position 1 on, with the state carried from
    the first character. The text goes through the model's preprocessing (lower-casing).
    A ``PreparedCorpus`` (``charlm_jax.data.prepared``) is scored on the tail the run held out
    (its ``val_fraction``), all of it: what validation scores, uncapped. ``None``: that tail of
    the run's own text, read again from where the run recorded it (``lm.text``).

    ``adapt`` (``True`` for the defaults, or a ``charlm_jax.AdaptOptions``): dynamic evaluation, the
    weights adapted segment by segment as the text is read, each segment scored before the model learns
    from it (``charlm_jax.use.adapt``); ``stateful`` mode only. The model itself is left unchanged.

    A character the model never saw is refused in one line; ``unseen="skip"`` scores the text without
    it (it is neither predicted nor read) and warns with how many were left out (``Vocab.encode``).
    """
    if mode not in SCORE_MODES:
        raise CharLMError(f"mode must be one of {', '.join(SCORE_MODES)}, got {mode!r}")
    options = as_adapt_options(adapt)
    if options is not None and mode != "stateful":
        raise CharLMError("adapt reads the text with its state carried from segment to segment: pass mode='stateful'")
    if text is None:
        ids = held_out_ids(lm, read_recorded_text(lm.text, "this model's run", lm.config.units))
    elif isinstance(text, str):
        ids = lm.vocab.encode(prepare_text(text, lm.config.lowercase), what="text", unseen=unseen)
    else:
        ids = held_out_ids(lm, text)
    needed = lm.config.maxlen + 1 if mode == "window" else 2
    if len(ids) < needed:
        raise CharLMError(
            f"text has {len(ids)} characters; {mode} scoring needs at least {needed}: "
            "pass a longer text" + (" or --mode stateful" if mode == "window" else "")
        )
    if options is not None:
        log_probs, _, _ = adaptive_pass(lm.params, lm.model, ids, options, lm.adapt_scale(options))
        return log_probs / np.log(2.0)
    return score_ids(lm.params, lm.model, ids, mode, lm.config.maxlen)


def measure_adapt_scale(lm: LanguageModel, options: AdaptOptions):
    """The ``rms`` rule's gradient scale on the training head of the run's own text (``LanguageModel.adapt_scale``
    keeps it)."""
    if lm.text is None or not lm.text.readable:
        raise CharLMError(
            "the rms adaptation rule measures the gradient scale on the run's training text, which this model's "
            "run did not record in a form it can read again: pass AdaptOptions(rule='sgd') (--adapt-rule sgd)"
        )
    ids, split = run_ids(lm, read_recorded_text(lm.text, "this model's run", lm.config.units))
    return gradient_scale(lm.params, lm.model, np.asarray(ids[: split.val_start]), options)


def held_out_ids(lm: LanguageModel, corpus: str | PreparedCorpus) -> np.ndarray:
    """The ids of the tail a run on ``corpus`` (a text or a ``PreparedCorpus``) held out for validation, int32."""
    if lm.config.val_fraction == 0:
        raise CharLMError("the run held nothing out (--val-fraction 0): score a text with --text instead")
    ids, split = run_ids(lm, corpus)
    return np.asarray(ids[split.val_start :], np.int32)


def run_ids(lm: LanguageModel, corpus: str | PreparedCorpus):
    """``corpus``'s ids as the model's run read them, and the run's split of them (head trained on, tail held out)."""
    vocab, ids = corpus_ids(corpus, lm.config.lowercase, lm.config.units)
    if vocab != lm.vocab:
        named = f"the prepared corpus {str(corpus.path)!r}" if isinstance(corpus, PreparedCorpus) else "the text"
        raise CharLMError(
            f"{named} has other characters than the model's vocabulary: pass the corpus the run was trained on, "
            "or --text"
        )
    return ids, split_windows(len(ids), lm.config.maxlen, lm.config.step, lm.config.val_fraction)


def next_char_probabilities(lm: LanguageModel, prompt: str, temperatures: tuple[float, ...] = (1.0,)) -> np.ndarray:
    """The model's distribution over the next character after ``prompt`` at each temperature, (T, vocab).

    Read as the book reads it (the last ``maxlen`` characters of the prompt, from a zero state), then
    ``softmax(logits / T)`` exactly as the samplers draw it (T = 0: all mass on the likeliest).
    What a temperature does to a distribution can be looked at, or tested, directly.
    """
    from charlm_jax.settings.config import check_temperatures
    from charlm_jax.use.sampling import tempered_logits

    check_temperatures(temperatures)
    ids = lm.encode_prompt(prompt)[-lm.config.maxlen :]
    _, logits = lm.model.apply({"params": lm.params}, jax.numpy.asarray(ids)[None, :], last_only=True)
    last = jax.numpy.asarray(logits)[0]  # (vocab,)
    rows = []
    for t in temperatures:
        if float(t) == 0.0:  # greedy: what sample draws at T = 0
            rows.append(np.eye(lm.vocab.size)[int(np.argmax(last))])
        else:
            rows.append(np.asarray(jax.nn.softmax(tempered_logits(last, float(t)))))
    return np.stack(rows).astype(np.float64)


def bits_per_char(lm: LanguageModel, text: str | PreparedCorpus | None = None, mode: str = "window") -> float:
    """Mean negative log2-probability of the scored characters of ``text`` (see ``score``)."""
    return float(-np.mean(score(lm, text, mode)))
