"""Generate from a model written by `charlm-jax export`, with JAX alone (charlm_jax is never imported).

    python examples/run_exported.py model.jaxexport --prompt "the " --seed 0 --temperatures 0.5

Reads model.jaxexport and model.jaxexport.json (the vocabulary and the inputs), encodes the prompt as the model
was trained (lower-cased, characters or UTF-8 bytes), calls the artifact and prints one text per row as JSON.
"""

import argparse
import json
import sys

import numpy as np
from jax import export


def encode(prompt: str, meta: dict) -> list[int]:
    if meta["lowercase"]:
        prompt = prompt.lower()
    if meta["units"] == "bytes":
        return list(prompt.encode("utf-8"))
    index = {char: i for i, char in enumerate(meta["chars"])}
    unknown = sorted({char for char in prompt if char not in index})
    if unknown:
        raise SystemExit(f"the prompt has characters the model never saw: {''.join(unknown)!r}")
    return [index[char] for char in prompt]


def decode(ids, meta: dict) -> str:
    if meta["units"] == "bytes":
        return bytes(int(i) for i in ids).decode("utf-8", "replace")
    return "".join(meta["chars"][int(i)] for i in ids)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("artifact")
    parser.add_argument("--prompt", default=None, help="default: the excerpt saved with the model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--temperatures", type=float, nargs="+", default=None, help="one per row")
    parser.add_argument("--filters", type=float, nargs="*", default=[], help="the exported filters' values, in order")
    args = parser.parse_args(argv)
    with open(args.artifact + ".json", encoding="utf-8") as file:
        meta = json.load(file)
    with open(args.artifact, "rb") as file:
        exported = export.deserialize(bytearray(file.read()))
    rows, width = meta["rows"], meta["max_prompt"]
    ids = encode(meta["default_prompt"] if args.prompt is None else args.prompt, meta)
    if len(ids) > width:
        raise SystemExit(
            f"the prompt has {len(ids)} units; this artifact reads at most {width}: export with --max-prompt"
        )
    prompt_ids = np.zeros((rows, width), np.int32)
    prompt_ids[:, : len(ids)] = ids
    temperatures = np.asarray(args.temperatures or [1.0] * rows, np.float32)
    filters = [np.full(rows, value, np.int32 if name == "no_repeat_ngram" else np.float32)
               for name, value in zip(meta["inputs"][4:], args.filters)]  # fmt: skip
    out = exported.call(prompt_ids, np.full(rows, len(ids), np.int32), np.int32(args.seed), temperatures, *filters)
    print(json.dumps([decode(row, meta) for row in np.asarray(out)], ensure_ascii=False))
    assert "charlm_jax" not in sys.modules
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
