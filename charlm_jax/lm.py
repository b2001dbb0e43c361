"""The Python API for researchers' scripts: load a checkpoint, generate, stream and score text.

    lm = charlm_jax.load("runs/book")
    texts = charlm_jax.generate(lm, "the meaning of ", length=400,
                                temperatures=(0.2, 0.5, 1.0, 1.2), seed=0)
    for piece in charlm_jax.stream(lm, "the meaning of ", temperature=0.5):
        print(piece, end="", flush=True)
    bits = charlm_jax.bits_per_char(lm, held_out_text)

A ``LanguageModel`` keeps its compiled generation functions, so a second call with the same
shapes costs what the computation costs: no tracing, no hashing of the model, no re-upload.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Iterator, Sequence

import jax
import numpy as np

from charlm_jax.config import BOOK_TEMPERATURES, DEFAULT_REPETITION_WINDOW, DEFAULT_SAMPLER, TrainConfig
from charlm_jax.data import Vocab, prepare_text
from charlm_jax.decode import Sampling, decode_chunk, sample_ids, start_stream, validate_generation_args
from charlm_jax.errors import CharLMError
from charlm_jax.model import CharLSTM, build_model, init_params
from charlm_jax.scoring import SCORE_MODES, score_ids

# Characters per streamed piece: the smallest chunk benchmarks/bench.py measured to cost at most
# 1.2x one generate call per character (1.08x on 2 CPU cores; 64 cost 1.40x).
DEFAULT_STREAM_CHUNK = 200


@dataclass(frozen=True)
class LanguageModel:
    """A trained model: parameters plus everything needed to read and write its text."""

    params: dict
    vocab: Vocab
    config: TrainConfig
    default_prompt: str
    step: int = 0

    @cached_property
    def model(self) -> CharLSTM:
        return build_model(self.config, self.vocab.size)

    def encode_prompt(self, prompt: str) -> np.ndarray:
        """Prompt ids after the training text's own preprocessing (lower-casing)."""
        if not isinstance(prompt, str) or not prompt:
            raise CharLMError("prompt is empty: pass some text, e.g. --prompt 'the '")
        return self.vocab.encode(prepare_text(prompt, self.config.lowercase), what="prompt")

    @cached_property
    def _compiled(self) -> dict:
        """jitted functions by their static arguments (each jit then caches its shapes)."""
        return {}

    @cached_property
    def _placed(self) -> dict:
        """The parameters replicated over each mesh they were asked for."""
        return {}

    def params_on(self, mesh) -> dict:
        """The parameters replicated over ``mesh``'s devices, placed once per mesh."""
        if mesh not in self._placed:
            from charlm_jax.distributed import put_global, replicated

            self._placed[mesh] = jax.tree.map(lambda x: put_global(np.asarray(x), replicated(mesh)), self.params)
        return self._placed[mesh]

    def compiled(self, kind: str, **static):
        """The jitted ``kind`` ("generate", "start", "chunk") with ``static`` arguments bound."""
        key = (kind, tuple(sorted(static.items())))
        if key not in self._compiled:
            body = {"generate": sample_ids, "start": start_stream, "chunk": decode_chunk}[kind]
            self._compiled[key] = jax.jit(partial(body, model=self.model, **static))
        return self._compiled[key]


def load(checkpoint_dir: str | os.PathLike, step: int | None = None) -> LanguageModel:
    """The model saved in a training run's output directory (latest intact step unless ``step``).

    A damaged newest step is skipped with a ``CheckpointFallbackWarning`` (see
    ``CheckpointStore.newest_readable``); an explicit ``step`` that cannot be read is an error.
    """
    from charlm_jax.checkpoint import CheckpointStore

    def read(at: int) -> LanguageModel:
        meta = store.restore_meta(at)
        model = build_model(meta.config, meta.vocab.size)
        shapes = jax.eval_shape(lambda: init_params(jax.random.key(0), model, meta.config.maxlen))
        # Onto this process's first device, whatever mesh wrote the checkpoint (several hosts' runs too).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), shapes)
        params, _ = store.restore(target, step=at)
        return LanguageModel(params=params, vocab=meta.vocab, config=meta.config,
                             default_prompt=meta.default_prompt, step=meta.step)

    with CheckpointStore(checkpoint_dir, create=False) as store:
        return store.newest_readable(read, step)


def generate(lm: LanguageModel, prompt: str | None = None, length: int = 400,
             temperatures: Sequence[float] | float = BOOK_TEMPERATURES, seed: int | jax.Array = 0,
             mode: str = "stateful", *, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, sampler: str = DEFAULT_SAMPLER, repetition_penalty: float | None = None,
             repetition_window: int = DEFAULT_REPETITION_WINDOW, no_repeat_ngram: int | None = None,
             include_prompt: bool = False, mesh=None) -> list[str]:
    """One generated string per temperature, all drawn in one jitted call.

    ``prompt`` defaults to the excerpt of training text saved in the checkpoint; it goes
    through the training preprocessing (lower-casing by default), and characters outside
    the vocabulary are refused with an error naming them. ``seed`` is an int or a
    ``jax.random`` key. Filters and repetition controls: see ``charlm_jax.sampling``. With a
    ``mesh`` (``charlm_jax.distributed.make_mesh``) the rows are split over its devices; the
    text is the same as unsharded for the same seed.
    """
    temps = validate_generation_args(length, temperatures, mode, top_k=top_k, top_p=top_p, min_p=min_p,
                                     sampler=sampler, repetition_penalty=repetition_penalty,
                                     repetition_window=repetition_window, no_repeat_ngram=no_repeat_ngram)
    prompt = lm.default_prompt if prompt is None else prompt
    prompt_rows = np.broadcast_to(lm.encode_prompt(prompt), (len(temps), len(prompt)))  # (temps, prompt)
    key = np.int32(seed) if isinstance(seed, (int, np.integer)) else seed
    params = lm.params
    if mesh is not None:
        from charlm_jax.distributed import shard_rows

        params = lm.params_on(mesh)
        prompt_rows, temps = shard_rows(mesh, prompt_rows, temps)
    run = lm.compiled("generate", length=int(length), mode=mode, maxlen=lm.config.maxlen, top_k=top_k,
                      sampler=sampler)
    ids = run(params, key, prompt_rows, temps, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
              repetition_window=repetition_window, no_repeat_ngram=no_repeat_ngram)
    head = prompt if include_prompt else ""
    return [head + lm.vocab.decode(row) for row in np.asarray(ids)]


def stream(lm: LanguageModel, prompt: str | None = None, length: int = 400, temperature: float = 1.0,
           seed: int | jax.Array = 0, mode: str = "stateful", chunk: int = DEFAULT_STREAM_CHUNK, *,
           top_k: int | None = None, top_p: float | None = None, min_p: float | None = None,
           sampler: str = DEFAULT_SAMPLER, repetition_penalty: float | None = None,
           repetition_window: int = DEFAULT_REPETITION_WINDOW,
           no_repeat_ngram: int | None = None) -> Iterator[str]:
    """Yield the text ``generate`` would return for this temperature, ``chunk`` characters at a time.

    Each piece is one jitted call of ``chunk`` steps carrying the decoding state, compiled
    once (the last piece runs a whole chunk and keeps what it needs); the text is the same
    as ``generate(lm, prompt, length, [temperature], seed, mode, ...)`` whatever ``chunk`` is.
    """
    temps = validate_generation_args(length, [temperature], mode, top_k=top_k, top_p=top_p, min_p=min_p,
                                     sampler=sampler, repetition_penalty=repetition_penalty,
                                     repetition_window=repetition_window, no_repeat_ngram=no_repeat_ngram)
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise CharLMError(f"chunk must be a positive integer, got {chunk!r}: pass e.g. --chunk {DEFAULT_STREAM_CHUNK}")
    prompt_ids = lm.encode_prompt(lm.default_prompt if prompt is None else prompt)[None, :]  # (1, prompt)
    return _stream(lm, prompt_ids, int(length), temps, seed, mode, int(chunk), top_k, sampler,
                   Sampling(temps, top_p, min_p, repetition_penalty, repetition_window, no_repeat_ngram))


def _stream(lm, prompt_ids, length, temps, seed, mode, chunk, top_k, sampler, sampling) -> Iterator[str]:
    key = np.int32(seed) if isinstance(seed, (int, np.integer)) else seed
    keep_history = sampling.repetition_penalty is not None or sampling.no_repeat_ngram is not None
    start = lm.compiled("start", length=length, chunk=chunk, mode=mode, maxlen=lm.config.maxlen,
                        keep_history=keep_history)
    run = lm.compiled("chunk", size=chunk, mode=mode, top_k=top_k, sampler=sampler)
    state, step_keys = start(lm.params, prompt_ids, key)
    for begin in range(0, length, chunk):
        state, ids = run(lm.params, state, step_keys, np.int32(begin), sampling)
        yield lm.vocab.decode(np.asarray(ids)[0, :length - begin])


def score(lm: LanguageModel, text: str, mode: str = "window") -> np.ndarray:
    """log2-probability of each scored character of ``text`` under the model (float64 numpy).

    ``window``: every character from position ``maxlen`` on, predicted from the ``maxlen``
    before it from a zero state (the training run's validation metric, given the held-out
    tail). ``stateful``: every character from position 1 on, with the state carried from
    the first character. The text goes through the model's preprocessing (lower-casing).
    """
    if mode not in SCORE_MODES:
        raise CharLMError(f"mode must be one of {', '.join(SCORE_MODES)}, got {mode!r}")
    ids = lm.vocab.encode(prepare_text(text, lm.config.lowercase), what="text")
    needed = lm.config.maxlen + 1 if mode == "window" else 2
    if len(ids) < needed:
        raise CharLMError(f"text has {len(ids)} characters; {mode} scoring needs at least {needed}: "
                          "pass a longer text" + (" or --mode stateful" if mode == "window" else ""))
    return score_ids(lm.params, lm.model, ids, mode, lm.config.maxlen)


def bits_per_char(lm: LanguageModel, text: str, mode: str = "window") -> float:
    """Mean negative log2-probability of the scored characters of ``text`` (see ``score``)."""
    return float(-np.mean(score(lm, text, mode)))
