"""Orbax checkpointing with resume: keep the last N, save every K steps and at the end.

Saves are asynchronous: `save` returns once the state is copied off the device and orbax writes it in
the background; every read (`latest_step`, `restore`) and `close` first waits for pending saves.

A checkpoint that cannot be restored (corrupt, half-written) does not leave a run stuck: `restore`
tries the older ones, newest first, resumes from the newest intact one (losing at most one save
interval), says so, and moves each unreadable step aside to <path>_corrupt/<step> (kept for a look,
never overwritten or deleted). Only when no step can be restored (all corrupt, or written with another
config) does it raise `CheckpointError`, and then nothing is moved.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def _short(err: BaseException, limit: int = 160) -> str:
    """An orbax/TensorStore error in one short line (they run to kilobytes)."""
    text = " ".join(str(err).split()).split(" See full TensorStore details")[0]
    return f"{type(err).__name__}: {text[:limit]}" + ("..." if len(text) > limit else "")


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into the expected state."""


class Checkpointer:
    """One orbax CheckpointManager per training stage (directory `path`)."""

    def __init__(self, path: str, *, max_to_keep: int = 3, save_every: int = 1000):
        self.path = os.path.abspath(path)
        self.save_every = save_every
        self._max_to_keep = max_to_keep
        self._manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.path,
            options=ocp.CheckpointManagerOptions(max_to_keep=self._max_to_keep, create=True),
        )

    @property
    def latest_step(self) -> int | None:
        """The newest finished checkpoint (waits for a pending save)."""
        self._manager.wait_until_finished()
        return self._manager.latest_step()

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Start saving `state` at `step` when due (every `save_every` steps) or when forced; does not wait."""
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            return False
        return self._manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def wait(self) -> None:
        """Block until every pending save is on disk."""
        self._manager.wait_until_finished()

    def restore(self, state_like, step: int | None = None):
        """Restore the latest intact (or exactly `step`) checkpoint shaped like `state_like`; None when none exist."""
        self._manager.wait_until_finished()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        steps = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
        failed = []
        for candidate in steps:
            try:
                state = self._manager.restore(candidate, args=ocp.args.StandardRestore(abstract))
            except Exception as err:  # orbax raises many types for unreadable or mismatched trees
                failed.append((candidate, err))
                continue
            if failed:
                self._set_aside(failed, candidate)
            return state
        if not failed:
            return None
        first_step, err = failed[0]
        tried = ", ".join(str(s) for s, _ in failed)
        raise CheckpointError(
            f"the checkpoints in {self.path} cannot be restored (tried step {tried}); step {first_step}: "
            f"{_short(err)}. They are corrupt or were written with another config. "
            "Nothing was overwritten. Use a new --workdir, or move that directory away to start over."
        )

    def _set_aside(self, failed, restored: int) -> None:
        """Move the unreadable steps to <path>_corrupt/ (process 0), so that saving resumes cleanly."""
        corrupt_dir = self.path + "_corrupt"
        moved = []
        if jax.process_index() == 0:
            os.makedirs(corrupt_dir, exist_ok=True)
            for step, _ in failed:
                target, i = os.path.join(corrupt_dir, str(step)), 1
                while os.path.exists(target):
                    target, i = os.path.join(corrupt_dir, f"{step}.{i}"), i + 1
                try:
                    os.replace(os.path.join(self.path, str(step)), target)
                    moved.append(target)
                except OSError as err:
                    log.warning(f"[checkpoint] could not move step {step} aside ({err}); it stays in place")
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"checkpoint_set_aside_{restored}")
        self._manager.close()
        self._manager = self._open()
        steps = ", ".join(str(s) for s, _ in failed)
        why = "; ".join(f"step {s}: {_short(e)}" for s, e in failed)
        where = f"; moved to {', '.join(moved)}" if moved else ""
        log.warning(
            f"[checkpoint] step {steps} in {self.path} cannot be restored ({why}); resuming from step {restored}, "
            f"the newest intact checkpoint{where}"
        )

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
