"""The fit loop without a model: the non-finite guard reads the device only at log and save steps, never
saves a run that went non-finite, and asynchronous checkpoints are complete when read back."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.train import loop, parallel
from casc_jax.train.checkpoint import Checkpointer


class _Writer:
    def write_scalars(self, step, scalars):
        del step, scalars

    def flush(self):
        pass


def _fit(tmp_path, *, bad_step=None, total=8, log_every=4, save_every=2):
    """Run `fit` with a step that adds the batch to a counter; step `bad_step` produces a NaN."""

    @jax.jit
    def step_fn(state, batch):
        new = state.params + batch["x"].sum()
        finite = jnp.isfinite(new)
        out = loop.guarded(state.replace(step=state.step + 1, params=new), state.replace(step=state.step + 1), finite)
        return out, {"loss": new, "finite": finite}

    def batches():
        for i in range(1, total + 1):
            yield {"x": np.full((2,), np.nan if i == bad_step else 1.0, np.float32)}

    ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=10, save_every=save_every)
    state = loop.TrainState(jnp.int32(0), jnp.float32(0.0), None)
    try:
        return loop.fit(name="t", state=state, step_fn=step_fn, batches=batches(), total_steps=total,
                        mesh=parallel.make_mesh(), checkpointer=ckpt, writer=_Writer(), log_every=log_every), ckpt
    finally:
        ckpt.close()


def test_device_is_read_only_at_log_and_save_steps(tmp_path, monkeypatch):
    reads = []
    real = jax.device_get
    monkeypatch.setattr(jax, "device_get", lambda x: reads.append(1) or real(x))
    state, _ = _fit(tmp_path, total=8, log_every=4, save_every=4)
    # The start step, then at steps 4 and 8 (log and save) the non-finite flag and the logged metrics.
    assert len(reads) == 1 + 2 * 2, len(reads)
    assert float(state.params) == 16.0


def test_nonfinite_step_stops_before_the_next_save_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(loop.TrainingDiverged, match=r"step 3; stopped.*last good checkpoint \(step 2\)"):
        _fit(tmp_path, bad_step=3, total=8, log_every=8, save_every=2)
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    assert ckpt.latest_step == 2 and list(ckpt._manager.all_steps()) == [2]
    restored = ckpt.restore(loop.TrainState(jnp.int32(0), jnp.float32(0.0), None))
    ckpt.close()
    assert int(restored.step) == 2 and float(restored.params) == 4.0


def test_async_saves_are_all_on_disk_after_fit(tmp_path):
    _, ckpt = _fit(tmp_path, total=6, log_every=6, save_every=2)
    reopened = Checkpointer(str(tmp_path / "ckpt"))
    assert sorted(reopened._manager.all_steps()) == [2, 4, 6]
    assert float(reopened.restore(loop.TrainState(jnp.int32(0), jnp.float32(0.0), None)).params) == 12.0
    reopened.close()


def test_jit_step_with_binds_the_constant_as_an_argument():
    """(state, batch) -> step(state, batch, const): the bound constant reaches the step and, unlike the state,
    is not donated (it stays readable after the call)."""

    def step(state, batch, const):
        return state + batch["x"].sum() * const["w"], {}

    mesh = parallel.make_mesh()
    batch = {"x": np.ones((2 * mesh.size,), np.float32)}
    w = {"w": jnp.float32(3.0)}
    out, _ = parallel.jit_step_with(step, w, mesh)(jnp.float32(1.0), batch)
    assert float(out) == 1.0 + 3.0 * batch["x"].size and float(w["w"]) == 3.0
    out, _ = parallel.jit_step_with(step, {"w": jnp.float32(-1.0)}, mesh)(jnp.float32(1.0), batch)
    assert float(out) == 1.0 - batch["x"].size
