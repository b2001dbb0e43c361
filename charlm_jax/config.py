"""One frozen config carrying the book's defaults (Deep Learning with Python, 8.1).

Every field maps one-to-one onto a ``charlm-jax train`` flag, and the whole
config is saved inside every checkpoint so a run can be resumed or reproduced
from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from charlm_jax.errors import CharLMError

BOOK_TEMPERATURES: tuple[float, ...] = (0.2, 0.5, 1.0, 1.2)

OBJECTIVES = ("next_char", "dense")
LR_SCHEDULES = ("constant", "cosine")
GENERATION_MODES = ("stateful", "window")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are the book's experiment."""

    # --- data (book: maxlen = 60, step = 3, text.lower()) ---
    maxlen: int = 60
    step: int = 3
    lowercase: bool = True
    val_fraction: float = 0.1
    # --- model (book: LSTM(128) + Dense(len(chars)) ) ---
    hidden_size: int = 128
    num_layers: int = 1
    dropout: float = 0.0
    # --- optimisation (book: RMSprop(lr=0.01), batch_size=128, 60 epochs) ---
    batch_size: int = 128
    learning_rate: float = 0.01
    # Keras 3 RMSprop constants: rho=0.9, epsilon=1e-7 inside the square root. Keras 2, which the
    # seeds ran, added epsilon outside the square root: rmsprop_eps_in_sqrt=False reproduces that.
    rmsprop_decay: float = 0.9
    rmsprop_eps: float = 1e-7
    rmsprop_eps_in_sqrt: bool = True
    epochs: int = 60
    # "constant": the book's fixed rate; "cosine": decay to lr_final_fraction * learning_rate
    # over the run's planned steps (epochs x steps per epoch). Both start with a linear
    # warm-up of warmup_steps from 0 (0: none, the book).
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    lr_final_fraction: float = 0.1
    # Stop when validation bits per character have not improved for this many epochs (0: never,
    # the book). The best epoch's checkpoint is always kept in <out>/best.
    early_stopping_patience: int = 0
    # "next_char": the book's objective (one target per window);
    # "dense": predict the next character at every position of the window.
    objective: str = "next_char"
    clip_norm: float | None = None
    # Skip any update whose gradients are not finite (optax.apply_if_finite) and stop the run
    # after this many skipped steps in a row; 0 turns the guard off. Finite runs are unchanged.
    max_nonfinite_in_row: int = 25
    # --- per-epoch samples (book: 400 characters at 0.2, 0.5, 1.0, 1.2) ---
    sample_length: int = 400
    temperatures: tuple[float, ...] = BOOK_TEMPERATURES
    sample_mode: str = "window"
    # --- reproducibility ---
    seed: int = 0
    # Loop unrolling of the LSTM scan: a speed knob, results are identical.
    unroll: int = 1

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["temperatures"] = list(self.temperatures)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CharLMError(
                f"checkpoint config has unknown fields {unknown}; it was written by a newer "
                "charlm-jax: upgrade charlm-jax to read it"
            )
        values = dict(data)
        if "temperatures" in values:
            values["temperatures"] = tuple(float(t) for t in values["temperatures"])
        return cls(**values)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CharLMError(message)


def validate_config(config: TrainConfig) -> None:
    """Refuse impossible settings while they are plain Python values, before any jit."""
    _require(config.maxlen >= 1, f"maxlen must be >= 1, got {config.maxlen}: pass --maxlen 60")
    _require(config.step >= 1, f"step must be >= 1, got {config.step}: pass --step 3")
    _require(0.0 <= config.val_fraction < 1.0,
             f"val_fraction must be in [0, 1), got {config.val_fraction}: pass --val-fraction 0.1")
    _require(config.hidden_size >= 1, f"hidden_size must be >= 1, got {config.hidden_size}")
    _require(config.num_layers >= 1, f"num_layers must be >= 1, got {config.num_layers}")
    _require(0.0 <= config.dropout < 1.0, f"dropout must be in [0, 1), got {config.dropout}")
    _require(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
    _require(config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}")
    _require(config.epochs >= 0, f"epochs must be >= 0, got {config.epochs}")
    _require(config.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {LR_SCHEDULES}, got {config.lr_schedule!r}")
    _require(config.warmup_steps >= 0, f"warmup_steps must be >= 0, got {config.warmup_steps}")
    _require(0.0 <= config.lr_final_fraction <= 1.0,
             f"lr_final_fraction must be in [0, 1], got {config.lr_final_fraction}")
    _require(config.early_stopping_patience >= 0,
             f"early_stopping_patience must be >= 0 (0: off), got {config.early_stopping_patience}")
    _require(config.objective in OBJECTIVES,
             f"objective must be one of {OBJECTIVES}, got {config.objective!r}")
    _require(config.clip_norm is None or config.clip_norm > 0,
             f"clip_norm must be > 0 (or unset), got {config.clip_norm}")
    _require(config.sample_length >= 0, f"sample_length must be >= 0, got {config.sample_length}")
    _require(all(t >= 0 for t in config.temperatures),
             f"temperatures must be >= 0 (0 means greedy), got {list(config.temperatures)}")
    _require(config.sample_mode in GENERATION_MODES,
             f"sample_mode must be one of {GENERATION_MODES}, got {config.sample_mode!r}")
    _require(config.unroll >= 1, f"unroll must be >= 1, got {config.unroll}")
    _require(config.max_nonfinite_in_row >= 0,
             f"max_nonfinite_in_row must be >= 0 (0: no guard), got {config.max_nonfinite_in_row}")
