"""One frozen config carrying the book's defaults (Deep Learning with Python, 8.1).

Every field maps one-to-one onto a ``charlm-jax train`` flag (its help text is the field's
metadata, so it lives here once), and the whole config is saved inside every checkpoint so
a run can be resumed or reproduced from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from charlm_jax.errors import CharLMError, worded

BOOK_TEMPERATURES: tuple[float, ...] = (0.2, 0.5, 1.0, 1.2)

OBJECTIVES = ("next_char", "dense")
BATCHINGS = ("windows", "streams")
LR_SCHEDULES = ("constant", "cosine")
PAST_BEST_POLICIES = ("anneal", "stop", "continue")
VAL_MODES = ("window", "stateful")
GENERATION_MODES = ("stateful", "window")
# Generation's choices, here so the CLI can offer them without importing JAX (sampling.py and
# decode.py explain them).
SAMPLERS = ("gumbel", "inverse_cdf")
DEFAULT_SAMPLER = "inverse_cdf"
DEFAULT_REPETITION_WINDOW = 20
# The repetition controls read at most this many of the last ids (prompt included): a ring
# carried in the generation scan, so their cost per character does not grow with the text.
DEFAULT_HISTORY_WINDOW = 512
DEFAULT_VAL_CHARS = 200_000
# The LSTM gates' activation (the functions: lstm.ACTIVATION_FUNCTIONS). Keras 3 and PyTorch: sigmoid. Keras
# 2.0-2.2, which the book used, defaulted to "hard_sigmoid_keras2", clip(0.2 z + 0.5, 0, 1);
# Keras 3's hard_sigmoid is clip(z / 6 + 0.5, 0, 1). Only imported Keras models need those two.
RECURRENT_ACTIVATIONS = ("sigmoid", "hard_sigmoid", "hard_sigmoid_keras2")
# What a model reads (``TrainConfig.units``), and what reading a text does with a character its vocabulary lacks:
# refuse it in one line, or leave it out and say how many were (``windows.Vocab.encode``). Here, so the CLI's
# flags offer them without importing numpy.
UNITS = ("chars", "bytes")
UNSEEN_POLICIES = ("error", "skip")
COMPUTE_DTYPES = ("float32", "bfloat16")  # precision.COMPUTE_DTYPES; here too, so the config imports no JAX


def check_temperatures(temperatures: Any) -> Any:
    """Temperatures as a (rows,) float32 array, refused in one line unless finite and >= 0 (0: greedy).

    The one rule, for ``--temperatures`` of ``generate`` and of ``train``'s per-epoch samples alike.
    """
    import numpy as np  # here, not at the top: `charlm-jax --help` imports this module and needs no numpy

    values = np.atleast_1d(np.asarray(temperatures, np.float64))
    if values.ndim != 1 or values.size == 0:
        raise CharLMError(f"temperatures must be a non-empty list of numbers, got {temperatures!r}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        raise CharLMError(
            f"temperature must be >= 0 and finite (0 means greedy), got {values.tolist()}: pass e.g. --temperatures 0.5"
        )
    return values.astype(np.float32)


def _field(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are the book's experiment."""

    # --- data (book: maxlen = 60, step = 3, text.lower()) ---
    maxlen: int = _field(60, "characters per training window (book: 60)")
    step: int = _field(3, "stride between window starts (book: 3)")
    lowercase: bool = _field(True, "lower-case the text before training (book: yes)")
    units: str = _field(
        "chars",
        "what the model reads and writes: chars (the text's characters, book) or bytes (its 256 UTF-8 byte values: "
        "any file, figures in bits per byte)",
        UNITS,
    )
    val_fraction: float = _field(0.1, "fraction of the text, at its end, held out for validation")
    # A 10 % tail of 10^8 characters is 10^7 windows: a validation of hours. Above the cap the
    # same evenly spaced characters of the tail are scored every time; the book's 60K-character
    # tail is below it and scored whole. charlm-jax eval scores the whole tail.
    val_chars: int = _field(
        DEFAULT_VAL_CHARS,
        "characters of the held-out tail scored per validation, evenly "
        "spaced, the same ones every time (0: all of them)",
    )
    # How a validation scores the tail. "window": the book's figure, each character from the maxlen before it (a
    # window per character, recomputed from a zero state). "stateful": one pass over the first val_chars
    # characters of the tail with the LSTM state carried, as the model generates: every character computed
    # once, so a record costs a small fraction of a window validation and can come often. `eval` gives either.
    val_mode: str = _field(
        "window",
        "how validation scores the tail: window (the book's: each character from the maxlen before it) or "
        "stateful (one pass over the first --val-chars characters with the state carried; much cheaper)",
        VAL_MODES,
    )
    # --- model (book: LSTM(128) + Dense(len(chars)) ) ---
    hidden_size: int = _field(128, "LSTM units per layer (book: 128)")
    num_layers: int = _field(1, "stacked LSTM layers (book: 1)")
    dropout: float = _field(0.0, "dropout on each LSTM layer's outputs (book: 0)")
    # Regularisation that suits recurrent nets (AWD-LSTM, Merity et al. 2017): a dropout mask drawn
    # once per sequence instead of once per step (variational dropout, Gal & Ghahramani 2016), and
    # DropConnect on the recurrent kernel, one mask per batch, which leaves the fused layer's
    # equations (and its hand-written gradient) untouched.
    locked_dropout: bool = _field(
        False, "draw --dropout's mask once per sequence, the same at every time step (variational dropout; book: off)"
    )
    weight_dropout: float = _field(0.0, "DropConnect on each layer's recurrent kernel, one mask per batch (book: 0)")
    recurrent_activation: str = _field(
        "sigmoid",
        "activation of the LSTM's i, f, o gates; the hard sigmoids exist for imported Keras "
        "models (Keras 2 and 3 define them differently)",
        RECURRENT_ACTIVATIONS,
    )
    compute_dtype: str = _field(
        "float32",
        "dtype of the model's matrix products, accumulated in float32; state, loss, optimizer and weights stay "
        "float32 (book: float32)",
        COMPUTE_DTYPES,
    )
    # --- optimisation (book: RMSprop(lr=0.01), batch_size=128, 60 epochs) ---
    batch_size: int = _field(128, "global batch size in windows (book: 128); must divide over the devices")
    learning_rate: float = _field(0.01, "RMSprop learning rate (book: 0.01)")
    # Keras 3 RMSprop constants: rho=0.9, epsilon=1e-7 inside the square root. Keras 2, which the
    # seeds ran, added epsilon outside the square root: rmsprop_eps_in_sqrt=False reproduces that.
    rmsprop_decay: float = _field(0.9, "RMSprop decay rho (Keras: 0.9)")
    rmsprop_eps: float = _field(1e-7, "RMSprop epsilon, inside the square root (Keras: 1e-7; optax default 1e-8)")
    rmsprop_eps_in_sqrt: bool = _field(
        True,
        "epsilon inside the square root (Keras 3) or, with "
        "--no-rmsprop-eps-in-sqrt, added after it (Keras 2, as the seeds ran)",
    )
    weight_decay: float = _field(
        0.0, "decoupled weight decay per step, scaled by the learning rate as AdamW does (book: 0)"
    )
    epochs: int = _field(60, "epochs to train (book: 60); with --resume, the new total")
    # "constant": the book's fixed rate; "cosine": decay to lr_final_fraction * learning_rate
    # over the run's planned steps (epochs x steps per epoch). Both start with a linear
    # warm-up of warmup_steps from 0 (0: none, the book).
    lr_schedule: str = _field(
        "constant", "learning-rate schedule (cosine spans --epochs; book: constant)", LR_SCHEDULES
    )
    warmup_steps: int = _field(0, "linear learning-rate warm-up from 0 over this many steps (book: 0)")
    lr_final_fraction: float = _field(0.1, "cosine schedule's final rate, as a fraction of --learning-rate")
    early_stopping_patience: int = _field(
        0,
        "stop after this many epochs without a better validation (0: never, the book); the best "
        "epoch is always kept in <out>/best",
    )
    # Under a wall-clock budget (--time-limit), once the validation has not improved for a fifth of the budget
    # (train.past_best): rewind to the best weights and lower the rate from there to its final value (cosine
    # schedules; a constant rate, the book's, stops instead), stop, or train on.
    past_best: str = _field(
        "anneal",
        "under --time-limit, when validation has not improved for a fifth of it: rewind to the best weights and "
        "anneal the learning rate from there (cosine schedules; others stop), stop, or continue",
        PAST_BEST_POLICIES,
    )
    # The fall's shape (train.past_best, train.steps.Anneal): its length as a share of the steps the run took to
    # go stale, and the rate it starts at as a share of the schedule's rate at the best point. On a small text that
    # overfits early, the shorter the fall the lower its validation (numpy's licence at 40 s:
    # results/2026-12-05-cpu-wall-clock-anneal); a quarter is what the 60 s race ran with.
    anneal_share: float = _field(
        0.25, "--past-best anneal: the fall lasts this share of the steps the validation took to go stale"
    )
    anneal_start: float = _field(
        1.0, "--past-best anneal: the fall starts at this share of the learning rate the best point had"
    )
    eval_every_steps: int = _field(
        0,
        "also validate, sample, log and checkpoint every this many steps (with "
        "--batching streams: instead of at each epoch's end), at the "
        "end of the block that reaches it (0: at the end of each epoch only)",
    )
    objective: str = _field(
        "next_char",
        "training objective: the character after each window (book), or the next character at every position",
        OBJECTIVES,
    )
    # "windows": the book's shuffled windows, each from a zero state. "streams": truncated BPTT as
    # char-rnn trains: the training text cut into batch_size consecutive streams, each batch the next
    # maxlen characters of every stream, the LSTM state carried (gradient stopped) from one batch to the
    # next, every position a target. Each character is computed once per epoch instead of ~maxlen / step
    # times, and the model sees context longer than maxlen.
    batching: str = _field(
        "windows",
        "how batches are cut: the book's shuffled windows from a zero state, or "
        "consecutive streams with the LSTM state carried between batches (truncated "
        "BPTT; needs --objective dense)",
        BATCHINGS,
    )
    clip_norm: float | None = _field(None, "clip gradients to this global norm (book: no clipping)")
    # An exponential moving average of the weights kept beside them (charlm_jax.train.averaging), validated at
    # each record next to the weights themselves; whichever validates better is kept as the best.
    average_decay: float = _field(
        0.0, "keep an exponential moving average of the weights with this decay, e.g. 0.999 (book: 0, none)"
    )
    # Skip any update whose gradients are not finite (optax.apply_if_finite) and stop the run
    # after this many skipped steps in a row; 0 turns the guard off. Finite runs are unchanged.
    max_nonfinite_in_row: int = _field(
        25, "skip updates with NaN/inf gradients; stop after this many in a row (0: no guard)"
    )
    # --- per-epoch samples (book: 400 characters at 0.2, 0.5, 1.0, 1.2) ---
    sample_length: int = _field(400, "characters sampled after each epoch (book: 400; 0 turns samples off)")
    temperatures: tuple[float, ...] = _field(
        BOOK_TEMPERATURES, "sampling temperatures after each epoch (book: 0.2 0.5 1.0 1.2)"
    )
    sample_mode: str = _field("window", "generation mode of the per-epoch samples (book: window)", GENERATION_MODES)
    # --- reproducibility ---
    seed: int = _field(0, "seed of every random choice (any integer): init, shuffling, dropout, samples")
    # --- speed only: results are the same whatever these are ---
    unroll: int = _field(1, "LSTM scan unroll factor (speed only)")
    steps_per_call: int = _field(
        16, "optimizer steps per jitted call (speed only; Python, host syncs and allocations happen once per call)"
    )

    def __post_init__(self) -> None:
        validate_config(self)
        object.__setattr__(self, "seed", int(self.seed))  # a numpy integer saves as a plain int

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["temperatures"] = list(self.temperatures)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
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


# Fields a resumed run may change: its length, how often and how it reports, and the speed knob;
# none of them changes the parameters a step computes.
RESUMABLE_FIELDS = (
    "compute_dtype",  # the weights are float32 whatever computes with them
    "epochs",
    "steps_per_call",
    "eval_every_steps",
    "sample_length",
    "temperatures",
    "sample_mode",
    "val_chars",
    "val_mode",
)


def resume_config(
    saved: TrainConfig, config: TrainConfig | None = None, overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The config of a resumed run: the saved one, with the resumable fields of ``config`` and
    ``overrides`` on top; any other difference is refused, naming the fields."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise CharLMError(f"unknown settings {unknown}: see charlm-jax train --help")
    wanted = saved.to_dict()
    if config is not None:
        wanted.update(config.to_dict())
    wanted.update({k: list(v) if k == "temperatures" else v for k, v in overrides.items()})
    stored = saved.to_dict()
    differing = [k for k in stored if k not in RESUMABLE_FIELDS and wanted[k] != stored[k]]
    if differing:
        raise worded(
            f"{{resume}} with settings that differ from the checkpoint's: {differing}; pass the same settings as "
            f"the original run (only {', '.join(RESUMABLE_FIELDS)} may change)"
        )
    return TrainConfig.from_dict(wanted)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CharLMError(message)


def validate_config(config: TrainConfig) -> None:
    """Refuse impossible settings while they are plain Python values, before any jit."""
    _require(config.maxlen >= 1, f"maxlen must be >= 1, got {config.maxlen}: pass --maxlen 60")
    _require(config.step >= 1, f"step must be >= 1, got {config.step}: pass --step 3")
    _require(config.val_chars >= 0, f"val_chars must be >= 0, got {config.val_chars}: pass e.g. --val-chars 200000")
    _require(
        0.0 <= config.val_fraction < 1.0,
        f"val_fraction must be in [0, 1), got {config.val_fraction}: pass --val-fraction 0.1",
    )
    _require(config.hidden_size >= 1, f"hidden_size must be >= 1, got {config.hidden_size}")
    _require(config.num_layers >= 1, f"num_layers must be >= 1, got {config.num_layers}")
    _require(0.0 <= config.dropout < 1.0, f"dropout must be in [0, 1), got {config.dropout}")
    _require(0.0 <= config.weight_dropout < 1.0, f"weight_dropout must be in [0, 1), got {config.weight_dropout}")
    _require(
        config.batching != "streams" or config.objective == "dense",
        "batching='streams' trains every position of each batch: pass --objective dense with --batching streams",
    )
    _require(config.batch_size >= 1, f"batch_size must be >= 1, got {config.batch_size}")
    _require(config.learning_rate > 0, f"learning_rate must be > 0, got {config.learning_rate}")
    _require(config.weight_decay >= 0, f"weight_decay must be >= 0, got {config.weight_decay}")
    _require(config.epochs >= 1, f"epochs must be >= 1, got {config.epochs}: pass --epochs 1 or more")
    _require(config.warmup_steps >= 0, f"warmup_steps must be >= 0, got {config.warmup_steps}")
    _require(
        0.0 <= config.lr_final_fraction <= 1.0, f"lr_final_fraction must be in [0, 1], got {config.lr_final_fraction}"
    )
    _require(
        0.0 < config.anneal_share <= 1.0,
        f"anneal_share must be in (0, 1], got {config.anneal_share}: pass e.g. --anneal-share 0.25",
    )
    _require(
        0.0 < config.anneal_start <= 1.0,
        f"anneal_start must be in (0, 1], got {config.anneal_start}: pass e.g. --anneal-start 0.5",
    )
    _require(
        config.early_stopping_patience >= 0,
        f"early_stopping_patience must be >= 0 (0: off), got {config.early_stopping_patience}",
    )
    _require(
        config.clip_norm is None or config.clip_norm > 0, f"clip_norm must be > 0 (or unset), got {config.clip_norm}"
    )
    _require(
        0.0 <= config.average_decay < 1.0,
        f"average_decay must be in [0, 1) (0: no averaging), got {config.average_decay}: pass e.g. --average-decay 0.999",
    )
    _require(config.sample_length >= 0, f"sample_length must be >= 0, got {config.sample_length}")
    if config.temperatures:
        check_temperatures(config.temperatures)
    _require(
        isinstance(config.seed, numbers.Integral) and not isinstance(config.seed, bool),
        f"seed must be an integer (any size: seeds.seed_key folds it into a key), got {config.seed!r}",
    )
    _require(config.unroll >= 1, f"unroll must be >= 1, got {config.unroll}")
    _require(config.steps_per_call >= 1, f"steps_per_call must be >= 1, got {config.steps_per_call}")
    _require(
        config.eval_every_steps >= 0, f"eval_every_steps must be >= 0 (0: each epoch), got {config.eval_every_steps}"
    )
    _require(
        config.max_nonfinite_in_row >= 0,
        f"max_nonfinite_in_row must be >= 0 (0: no guard), got {config.max_nonfinite_in_row}",
    )
    for field in dataclasses.fields(config):
        choices = field.metadata.get("choices")
        value = getattr(config, field.name)
        _require(choices is None or value in choices, f"{field.name} must be one of {choices}, got {value!r}")
