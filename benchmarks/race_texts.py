"""The texts the races train on, and the held-out tail a run validated on: one home for every race script.

Importing this computes nothing and splits no CPU: each script that trains in its own process chooses its devices.
"""

from __future__ import annotations

from pathlib import Path

from charlm_jax import load_text
from charlm_jax.data.windows import prepare_text, split_windows

# Beyond the built-in corpora: "numpy-license", numpy's LICENSE.txt (a legal text from the numpy wheel), named
# before the wall-clock races and not tuned on.
RACE_VAL_CHARS = 8192  # tail windows per validation during a run, as the GPT peer's (gpt_peer.TRAINING_VAL_WINDOWS)


def race_text(name: str, chars: int) -> str:
    """The first ``chars`` characters of a built-in corpus or of numpy's licence."""
    if name == "numpy-license":
        from importlib.metadata import distribution

        dist = distribution("numpy")
        path = next(p for p in dist.files or () if p.name == "LICENSE.txt" and "dist-info" in str(p))
        return Path(dist.locate_file(path)).read_text(encoding="utf-8")[:chars]
    return load_text(name)[:chars]


def validation_tail(text: str, config) -> str:
    """The held-out tail the run validated on: the loop's own split (``split_windows``) of the prepared text."""
    prepared = prepare_text(text, config.lowercase)
    return prepared[split_windows(len(prepared), config.maxlen, config.step, config.val_fraction).val_start :]
