"""The whole generation as one ``jax.export`` artifact: a model that leaves Python's charlm_jax behind.

``export_generation`` lowers, for fixed ``rows``, ``length`` and a longest prompt ``max_prompt``, the function

    generate(prompt_ids (rows, max_prompt) int32, prompt_lengths (rows,) int32, seed () int32,
             temperatures (rows,) float32, [top_p, min_p, repetition_penalty (rows,) float32,
             no_repeat_ngram (rows,) int32 — each only when exported on]) -> ids (rows, length) int32

with the weights inside: reading the right-padded prompts (stateful), the decoding scan and the sampler,
exactly what ``charlm_jax.generate`` runs (its text for a seed, row by row), for each platform asked
(``cpu``, ``cuda``, ``tpu``; lowering needs no such device). What is compiled in (the sampler, top-k, which
filters are on, the history's width, the shapes) is fixed at export and written beside the artifact in a JSON
file with the vocabulary, so a program with JAX alone (``examples/run_exported.py``) can encode a prompt, call
it and decode the ids. Stateful generation only; stop strings are not exported.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from charlm_jax.errors import CharLMError
from charlm_jax.settings.generation import GenerationOptions
from charlm_jax.use.decode import run_steps, start_rows

PLATFORMS = ("cpu", "cuda", "tpu", "rocm")
EXPORT_FORMAT = 1
# The optional traced filters an export can take as inputs, and their dtypes.
FILTER_INPUTS = {
    "top_p": np.float32,
    "min_p": np.float32,
    "repetition_penalty": np.float32,
    "no_repeat_ngram": np.int32,
}


def _per_row(name: str, values: jax.Array):
    """A filter's (rows,) input shaped as the scan reads it (``GenerationOptions.with_rows``)."""
    return values if name == "repetition_window" else values[:, None]


def export_generation(lm, options: GenerationOptions, *, max_prompt: int = 256, platforms=("cpu",)):
    """``jax.export.Exported`` of ``lm``'s generation of ``options.length`` ids for ``options.rows`` rows (see the
    module docstring): ``options`` fixes what is compiled in; its filters that are on become inputs."""
    if options.mode != "stateful" or options.stop:
        raise CharLMError("export writes stateful generation without stop strings: drop --mode window / --stop")
    unknown = sorted(set(platforms) - set(PLATFORMS))
    if unknown or not platforms:
        raise CharLMError(f"platforms must be some of {', '.join(PLATFORMS)}, got {list(platforms)}")
    if isinstance(max_prompt, bool) or not isinstance(max_prompt, int) or max_prompt < 1:
        raise CharLMError(f"max_prompt must be a positive integer, got {max_prompt!r}")
    filters = [name for name in FILTER_INPUTS if getattr(options, name) is not None]
    rows, params, model = options.rows, lm.params, lm.model

    def generate(prompt_ids, prompt_lengths, seed, temperatures, *filter_values):
        key = jax.random.key(seed)
        row_keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(rows, dtype=jnp.int32))
        per_row = {name: _per_row(name, value) for name, value in zip(filters, filter_values)}
        row_options = options.with_rows(temperatures, **per_row)
        state = start_rows(params, row_keys, prompt_ids, prompt_lengths, row_options, model=model)
        return run_steps(params, state, row_options, model=model, count=options.length)[1]

    specs = [
        jax.ShapeDtypeStruct((rows, max_prompt), jnp.int32),
        jax.ShapeDtypeStruct((rows,), jnp.int32),
        jax.ShapeDtypeStruct((), jnp.int32),
        jax.ShapeDtypeStruct((rows,), jnp.float32),
        *[jax.ShapeDtypeStruct((rows,), FILTER_INPUTS[name]) for name in filters],
    ]
    return jax.export.export(jax.jit(generate), platforms=tuple(platforms))(*specs), filters


def describe(lm, options: GenerationOptions, filters: list[str], max_prompt: int, platforms) -> dict:
    """What a program needs to call the artifact: the vocabulary, how prompts are encoded, the inputs."""
    return {
        "format": EXPORT_FORMAT,
        "chars": list(lm.vocab.chars),
        "units": lm.config.units,
        "lowercase": lm.config.lowercase,
        "rows": options.rows,
        "length": options.length,
        "max_prompt": max_prompt,
        "inputs": ["prompt_ids", "prompt_lengths", "seed", "temperatures", *filters],
        "compiled_in": {
            "sampler": options.sampler,
            "top_k": options.top_k,
            "history_window": options.history_window if options.keeps_history else None,
            "repetition_window": options.repetition_window if options.repetition_penalty is not None else None,
        },
        "platforms": list(platforms),
        "step": lm.step,
        "default_prompt": lm.default_prompt,
    }


def write_export(lm, options: GenerationOptions, out: str | Path, *, max_prompt: int = 256, platforms=("cpu",)):
    """Write ``out`` (the serialized artifact) and ``out`` + ``.json`` (``describe``), each atomically; returns
    both paths."""
    exported, filters = export_generation(lm, options, max_prompt=max_prompt, platforms=platforms)
    out = Path(out)
    meta = out.with_name(out.name + ".json")
    description = json.dumps(describe(lm, options, filters, max_prompt, platforms), ensure_ascii=False, indent=1)
    for path, data in ((out, bytes(exported.serialize())), (meta, description.encode("utf-8"))):
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_bytes(data)
        temporary.replace(path)
    return out, meta
