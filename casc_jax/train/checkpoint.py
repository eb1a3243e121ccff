"""Orbax checkpointing with resume: keep the last N, save every K steps and at the end.

A checkpoint that exists but cannot be restored (corrupt, written by another config) raises
`CheckpointError`; training never silently restarts from scratch over it.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be restored into the expected state."""


class Checkpointer:
    """One orbax CheckpointManager per training stage (directory `path`)."""

    def __init__(self, path: str, *, max_to_keep: int = 3, save_every: int = 1000):
        self.path = os.path.abspath(path)
        self.save_every = save_every
        self._manager = ocp.CheckpointManager(
            self.path,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    @property
    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Save `state` at `step` when due (every `save_every` steps) or when forced."""
        if not force and step % self.save_every:
            return False
        if step in self._manager.all_steps():
            return False
        saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=True)
        self._manager.wait_until_finished()
        return saved

    def restore(self, state_like, step: int | None = None):
        """Restore the latest (or `step`) checkpoint shaped like `state_like`; None when there is none."""
        step = self.latest_step if step is None else step
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        try:
            return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax raises many types for unreadable or mismatched trees
            raise CheckpointError(
                f"the checkpoint at {self.path} (step {step}) cannot be restored: {type(err).__name__}: "
                f"{str(err)[:500]}\nIt is corrupt or was written with another config. Nothing was "
                "overwritten. Use a new --workdir, or move that directory away to start over."
            ) from err

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
