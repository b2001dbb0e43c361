"""One memory measurement in a fresh process: ``python memory_child.py charlm|book|score``.

Prints one JSON line: the peak resident-memory increase (VmHWM) over what the process held
before the measured work, and the bytes of the arrays that work builds.

* ``charlm``: this project's data pipeline for 600K characters (int32 ids and window starts);
* ``book``: the book's one-hot ``x`` (windows, 60, vocab) and ``y`` for the same text
  (built with numpy indexing instead of its Python loop: the same arrays, in seconds);
* ``score``: ``charlm_jax.score`` of a 1M-character text in window mode (the book's model size).
"""

from __future__ import annotations

import json
import sys

import numpy as np

from common import peak_rss_bytes


def text_of(length: int) -> str:
    from charlm_jax.data.corpus import load_text

    text = load_text(None).lower()
    return (text * (length // len(text) + 1))[:length]


def main(kind: str) -> dict:
    text = text_of(1_000_000 if kind == "score" else 600_000)
    if kind == "charlm":
        import jax

        from charlm_jax.data.windows import Vocab, split_windows

        before = peak_rss_bytes()
        vocab = Vocab.from_text(text)
        ids = vocab.encode(text)
        split = split_windows(len(text), 60, 3, 0.1)
        jax.device_put(ids).block_until_ready()
        nbytes = ids.nbytes + split.val_starts.nbytes  # training starts are drawn per block, never stored
    elif kind == "book":
        before = peak_rss_bytes()
        maxlen, step = 60, 3
        starts = np.arange(0, len(text) - maxlen, step)
        chars = sorted(set(text))
        index = {c: i for i, c in enumerate(chars)}
        ids = np.fromiter((index[c] for c in text), np.int64, len(text))
        x = np.zeros((len(starts), maxlen, len(chars)), dtype=bool)
        y = np.zeros((len(starts), len(chars)), dtype=bool)
        rows = np.arange(len(starts))
        for t in range(maxlen):
            x[rows, t, ids[starts + t]] = 1
        y[rows, ids[starts + maxlen]] = 1
        nbytes = x.nbytes + y.nbytes
    else:
        import jax

        import charlm_jax
        from charlm_jax.data.windows import Vocab
        from charlm_jax.model.charlstm import build_model, init_params

        vocab = Vocab.from_text(text)
        config = charlm_jax.TrainConfig()
        params = init_params(jax.random.key(0), build_model(config, vocab.size), config.maxlen)
        lm = charlm_jax.LanguageModel(params=params, vocab=vocab, config=config, default_prompt=text[:60])
        charlm_jax.score(lm, text[:2000])  # compile, and let the runtime reach its working size
        before = peak_rss_bytes()
        scores = charlm_jax.score(lm, text)
        nbytes = scores.nbytes + len(text) * 4
    return {"peak_rss_increase_bytes": peak_rss_bytes() - before, "array_bytes": int(nbytes)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])))
