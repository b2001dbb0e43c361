"""Figures for docs/sampling.md, from a real trained checkpoint.

1. The next-character distribution after one prompt, reweighted at the book's
   temperatures (0.2, 0.5, 1.0, 1.2): the 20 most likely characters.
2. Entropy (bits) of the next-character distribution against temperature,
   averaged over validation windows of the training text.

    python scripts/sampling_figures.py --checkpoint runs/charlm --out docs/figures
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import charlm_jax
from charlm_jax.data.windows import gather_windows, prepare_text, split_windows
from charlm_jax.use.sampling import entropy_bits, tempered_logits


def next_char_logits(lm, windows: np.ndarray) -> jax.Array:
    _, logits = lm.model.apply({"params": lm.params}, jnp.asarray(windows), last_only=True)
    return logits  # (batch, vocab)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--text", help="the run's training text (default: built-in corpus)")
    parser.add_argument("--prompt", help="prompt of figure 1 (default: the checkpoint's saved excerpt)")
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--windows", type=int, default=512, help="validation windows averaged in figure 2")
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        lm = charlm_jax.load(args.checkpoint)
        text = prepare_text(charlm_jax.load_text(args.text), lm.config.lowercase)
        prompt = args.prompt or lm.default_prompt
        prompt_ids = lm.encode_prompt(prompt)[-lm.config.maxlen :]
    except charlm_jax.CharLMError as error:
        print(f"sampling_figures: error: {error}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    logits = next_char_logits(lm, prompt_ids[None, :])[0]
    temps = (0.2, 0.5, 1.0, 1.2)
    probs = {t: np.asarray(jax.nn.softmax(tempered_logits(logits, t))) for t in temps}
    top = np.argsort(-probs[1.0])[:20]
    labels = [repr(lm.vocab.chars[i])[1:-1] or "?" for i in top]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.2
    for j, t in enumerate(temps):
        ax.bar(np.arange(len(top)) + (j - 1.5) * width, probs[t][top], width, label=f"T = {t}")
    ax.set_xticks(np.arange(len(top)), labels, fontfamily="monospace")
    ax.set_ylabel("probability of the next character")
    shown = prompt[-40:].replace("\n", "\\n")
    ax.set_title(f'next character after "...{shown}" (step {lm.step})')
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "reweighted_distributions.png", dpi=120)

    ids = lm.vocab.encode(text)
    split = split_windows(len(text), lm.config.maxlen, lm.config.step, lm.config.val_fraction or 0.1)
    chosen = split.val_starts[np.linspace(0, len(split.val_starts) - 1, args.windows).astype(int)]
    windows = np.asarray(gather_windows(jnp.asarray(ids), jnp.asarray(chosen), lm.config.maxlen))
    val_logits = next_char_logits(lm, windows)
    grid = np.geomspace(0.05, 5.0, 40)
    entropies = [float(jnp.mean(entropy_bits(tempered_logits(val_logits, t)))) for t in grid]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(grid, entropies, marker=".")
    for t in temps:
        ax.axvline(t, color="grey", lw=0.5, ls="--")
    ax.axhline(np.log2(lm.vocab.size), color="red", lw=0.8, label=f"uniform: log2({lm.vocab.size})")
    ax.set_xlabel("temperature")
    ax.set_ylabel("entropy of next-character distribution (bits)")
    ax.set_title(f"mean over {args.windows} validation windows")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "entropy_vs_temperature.png", dpi=120)
    summary = {
        "checkpoint": str(args.checkpoint),
        "step": lm.step,
        "prompt": prompt,
        "entropy_bits": {f"{t:.3g}": e for t, e in zip(grid, entropies)},
        "top_probabilities": {str(t): {lm.vocab.chars[i]: float(probs[t][i]) for i in top[:5]} for t in temps},
    }
    (out / "sampling_figures.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'reweighted_distributions.png'} and {out / 'entropy_vs_temperature.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
