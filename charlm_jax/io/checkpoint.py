"""Orbax checkpoints: params, optimizer state, step, vocab and config, written atomically.

Orbax writes each step into a temporary directory and renames it when
complete, so a run killed mid-save leaves the previous checkpoint intact.
A checkpoint directory holds numbered steps; three items per step:

* ``params``  - the model parameters (all ``load`` needs),
* ``train``   - optimizer state and step (what ``--resume`` needs besides),
* ``meta``    - JSON: format version, config, vocabulary, a default prompt, epoch.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from charlm_jax.data.record import TextRecord
from charlm_jax.data.windows import Vocab
from charlm_jax.errors import CharLMError, CharLMWarning, MachineError
from charlm_jax.settings.config import TrainConfig

FORMAT_VERSION = 1
ITEM_NAMES = ("params", "train", "meta")
DAMAGED_SUBDIR = "damaged"
T = TypeVar("T")


class CheckpointFallbackWarning(CharLMWarning):
    """The newest checkpoint was damaged and an older intact one was used (the CLI prints it as one line)."""


class DamagedCheckpoint(CharLMError):
    """A step that cannot be read: files missing or corrupt (``cause`` says how, in a few words)."""

    def __init__(self, message: str, cause: str) -> None:
        super().__init__(message)
        self.cause = cause


class CheckpointWriteError(MachineError):
    """A checkpoint could not be written (disk full, permissions, read-only file system).

    The previous checkpoint is intact (orbax writes into a temporary directory and renames
    it when complete); the CLI exits with status 1, as for other failures of the machine.
    """


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: it costs ~1 s, and `generate --help` needs none of it

    return ocp


@dataclass(frozen=True)
class CheckpointMeta:
    config: TrainConfig
    vocab: Vocab
    step: int
    epoch: int
    default_prompt: str
    # Validation bits per character of these parameters, when measured (the best checkpoint's
    # record of why it is the best). A change to these fields raises FORMAT_VERSION; from the first
    # release on, one migration keyed on it reads the older ones.
    val_bits_per_char: float | None = None
    # The run's training clock (validation excluded) and skipped-update count at this step,
    # so a resumed run's time limit and records continue where it stopped.
    train_seconds: float = 0.0
    # The run's wall clock at this step (compiling, validating and checkpointing included), across resumes.
    wall_seconds: float = 0.0
    skipped_steps_total: int = 0
    # The learning-rate schedule's length when it was fitted to a time budget (None: the epochs').
    schedule_steps: int | None = None
    # A run rewound to its best weights under a time budget: (at step, to step, steps the rate falls over), the
    # fields of train.steps.Anneal (None: never rewound).
    anneal: tuple[int, int, int] | None = None
    # Where the run's text came from, its length and sha256 (None: an imported model given no text).
    text: TextRecord | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "vocab": self.vocab.chars,
            "step": self.step,
            "epoch": self.epoch,
            "default_prompt": self.default_prompt,
            "val_bits_per_char": self.val_bits_per_char,
            "train_seconds": self.train_seconds,
            "wall_seconds": self.wall_seconds,
            "skipped_steps_total": self.skipped_steps_total,
            "schedule_steps": self.schedule_steps,
            "anneal": list(self.anneal) if self.anneal is not None else None,
            "text": self.text.to_json() if self.text is not None else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> CheckpointMeta:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise CharLMError(
                f"checkpoint {where} has format version {version}, this charlm-jax reads "
                f"version {FORMAT_VERSION}: use the charlm-jax version that wrote it"
            )
        try:
            config = TrainConfig.from_dict(data["config"])
            return cls(
                config=config,
                vocab=Vocab(data["vocab"], config.units),
                step=int(data["step"]),
                epoch=int(data["epoch"]),
                default_prompt=str(data["default_prompt"]),
                val_bits_per_char=_optional_float(data.get("val_bits_per_char")),
                train_seconds=float(data.get("train_seconds", 0.0)),
                wall_seconds=float(data.get("wall_seconds", 0.0)),
                skipped_steps_total=int(data.get("skipped_steps_total", 0)),
                schedule_steps=_optional_int(data.get("schedule_steps")),
                anneal=tuple(int(v) for v in data["anneal"]) if data.get("anneal") is not None else None,  # type: ignore[arg-type]
                text=TextRecord.from_json(data.get("text")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DamagedCheckpoint(
                f"checkpoint {where} has a broken meta record ({error!r}): "
                "retrain, or point --checkpoint at an intact run",
                "broken meta record",
            ) from None


def _optional_float(value) -> float | None:
    return None if value is None else float(value)


def _optional_int(value) -> int | None:
    return None if value is None else int(value)


class CheckpointStore:
    """The numbered checkpoints of one run directory (a thin wrapper over orbax's manager)."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 3, create: bool = True):
        ocp = _ocp()
        self.directory = Path(directory).absolute()
        # With ``create`` orbax makes the directory (a run directory is made and checked first, by
        # run_dir.make_run_directory); without, it must already be a checkpoint directory.
        if not create and (blocker := file_in_the_way(directory)) is not None:
            raise CharLMError(
                f"{str(blocker)!r} is a file, not a checkpoint directory: pass the --out directory of a training run"
            )
        if not create and not self.directory.is_dir():
            raise CharLMError(
                f"no checkpoint directory at {str(directory)!r}: pass the --out "
                "directory of a finished or interrupted training run"
            )
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEM_NAMES)

    def item_keys(self, step: int, item: str) -> set[str]:
        """The top-level keys a step's ``item`` holds, read from orbax's tree metadata (no arrays are read)."""
        ocp = _ocp()
        from etils import epath  # orbax's own path type

        try:
            metadata = ocp.StandardCheckpointHandler().metadata(epath.Path(self.directory / str(step) / item))
        except Exception:  # orbax raises many types for a damaged directory; the restore then reports it
            return set()
        tree = getattr(metadata, "tree", metadata)
        return set(tree) if isinstance(tree, dict) else set()

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps held, oldest first (at most ``max_to_keep``)."""
        return sorted(self._manager.all_steps())

    def save(self, params, train_state: dict[str, Any], meta: CheckpointMeta) -> None:
        ocp = _ocp()
        args = ocp.args.Composite(
            params=ocp.args.StandardSave(params),
            train=ocp.args.StandardSave(train_state),
            meta=ocp.args.JsonSave(meta.to_json()),
        )
        previous = self.latest_step()
        try:
            self._manager.save(meta.step, args=args, force=True)
            self._manager.wait_until_finished()
        except Exception as error:  # orbax and tensorstore raise OSError, ValueError, ... for a full disk
            kept = f"step {previous} is intact" if previous is not None else "no earlier checkpoint exists"
            raise CheckpointWriteError(
                f"cannot write checkpoint step {meta.step} in {str(self.directory)!r} "
                f"({describe_error(error)}); {kept}: free space or fix the directory, "
                "then --resume"
            ) from None

    def newest_readable(self, read: Callable[[int], T], step: int | None = None, set_aside: bool = False) -> T:
        """``read(step)`` of ``step``, or of the newest step it succeeds on.

        The policy for damaged checkpoints: an explicit ``step`` that cannot be read is an error;
        otherwise a damaged newest step is skipped with a ``CheckpointFallbackWarning`` naming it
        and the next older one is read. ``set_aside`` (a resuming trainer, which will write these
        step numbers again) moves the skipped steps into ``<dir>/damaged/`` for inspection.
        """
        if step is not None:
            return read(self._step_or_latest(step))
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            self._step_or_latest(None)  # raises: no checkpoint at all
        problems = []
        for candidate in steps:
            try:
                value = read(candidate)
            except DamagedCheckpoint as error:
                problems.append((candidate, error))
                continue
            for damaged, problem in problems:
                moved = self._set_aside(damaged) if set_aside else None
                warnings.warn(
                    CheckpointFallbackWarning(
                        f"checkpoint step {damaged} in {str(self.directory)!r} is damaged ({problem.cause}); using step "
                        f"{candidate}" + (f"; the damaged step moved to {str(moved)!r}" if moved else "")
                    ),
                    stacklevel=2,
                )
            return value
        raise CharLMError(f"no intact checkpoint in {str(self.directory)!r}: {problems[0][1]}")

    def _set_aside(self, step: int) -> Path:
        target = self.directory / DAMAGED_SUBDIR / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self.directory / str(step)), target)
        self._manager.reload()
        return target

    def _step_or_latest(self, step: int | None) -> int:
        if step is None:
            step = self.latest_step()
        if step is None:
            raise CharLMError(
                f"no checkpoint in {str(self.directory)!r}: train first (charlm-jax train --out DIR) and pass that DIR"
            )
        if step not in self.all_steps():
            raise CharLMError(
                f"no checkpoint for step {step} in {str(self.directory)!r}; available: {self.all_steps()}"
            )
        return step

    def restore_meta(self, step: int | None = None) -> CheckpointMeta:
        ocp = _ocp()
        step = self._step_or_latest(step)
        where = f"{self.directory}/{step}"
        try:
            data = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except CharLMError:
            raise
        except Exception as error:  # orbax raises many types for a damaged directory
            raise DamagedCheckpoint(
                f"checkpoint {where} is unreadable ({type(error).__name__}): it is corrupt or "
                "not a charlm-jax checkpoint; retrain or use another",
                f"meta unreadable: {type(error).__name__}",
            ) from None
        if not isinstance(data, dict):
            raise DamagedCheckpoint(
                f"checkpoint {where} has no meta record: it is not a charlm-jax checkpoint", "no meta record"
            )
        return CheckpointMeta.from_json(data, where)

    def restore(self, abstract_params, abstract_train_state=None, step: int | None = None):
        """Arrays shaped like the given abstract trees (``jax.ShapeDtypeStruct`` leaves)."""
        ocp = _ocp()
        step = self._step_or_latest(step)
        items = {"params": ocp.args.StandardRestore(abstract_params)}
        if abstract_train_state is not None:
            items["train"] = ocp.args.StandardRestore(abstract_train_state)
        try:
            restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as error:
            raise DamagedCheckpoint(
                f"checkpoint {self.directory}/{step} does not match this model "
                f"({type(error).__name__}): it is corrupt or was written by an "
                "incompatible version; retrain or use another",
                f"arrays unreadable: {type(error).__name__}",
            ) from None
        return restored["params"], restored.get("train") if abstract_train_state is not None else None

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def peek_saved_config(directory: str | os.PathLike) -> TrainConfig | None:
    """The config of the newest checkpoint in ``directory``, read as plain JSON, or None.

    For the CLI only: it must know a resumed run's batch size before it splits the CPU into
    devices, and orbax's reader starts JAX's backends (after which the split is fixed). A
    layout it does not recognise gives None (the flags' batch size is used instead).
    """
    return _peek(directory, lambda data: TrainConfig.from_dict(data["config"]))


def peek_saved_text(directory: str | os.PathLike) -> TextRecord | None:
    """The text record of the newest checkpoint in ``directory`` (plain JSON, no JAX), or None."""
    return _peek(directory, lambda data: TextRecord.from_json(data.get("text")))


def _peek(directory: str | os.PathLike, read: Callable[[dict[str, Any]], T]) -> T | None:
    steps = sorted((int(p.name) for p in Path(directory).glob("[0-9]*") if p.name.isdigit()), reverse=True)
    for step in steps:
        try:
            return read(json.loads((Path(directory) / str(step) / "meta" / "metadata").read_text()))
        except (OSError, ValueError, KeyError, TypeError, CharLMError):
            continue
    return None


def describe_error(error: BaseException) -> str:
    """An OS error as its errno text and path; anything else as its first line, without the stack."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror + (f": {error.filename}" if error.filename else "")
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text[:300]


def file_in_the_way(directory: str | os.PathLike) -> Path | None:
    """The first of ``directory`` and its parents that exists but is not a directory, if any."""
    path = Path(directory)
    return next((part for part in (path, *path.parents) if part.exists() and not part.is_dir()), None)
