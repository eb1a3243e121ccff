"""The config blocks every experiment shares: header, data, channel, training header, sampler, evaluation.

Unset values are `None` (typed placeholders, so `--config.x.y=V` still works on the command line), never
sentinel zeros. `apply_preset` records the preset in `config.preset`, which the launcher reads (e.g. for the
default workdir `runs/<name>_<preset>`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ml_collections
from ml_collections import config_dict

PAPER_SNRS = (5.0, 10.0, 15.0, 20.0)  # the CASC paper's training and evaluation SNRs (dB)


def unset(kind: type) -> config_dict.FieldReference:
    """A field that is None until set (on the command line or by a preset) to a `kind` value."""
    return config_dict.placeholder(kind)


def experiment(system: str, name: str, **fields) -> ml_collections.ConfigDict:
    """The header: which system, the run's name (the default workdir is runs/<name>), the seed, `fields`."""
    return ml_collections.ConfigDict(dict(system=system, name=name, preset="", seed=0, **fields))


def data(source: str = "tfds:cifar10", eval_split: str = "test", **fields) -> ml_collections.ConfigDict:
    """Where the images come from (see `casc_jax.data`); `data_dir` None is TFDS's default."""
    return ml_collections.ConfigDict(
        dict(source=source, data_dir=unset(str), download=False, eval_split=eval_split, **fields)
    )


def channel(train_snrs=PAPER_SNRS, eval_snrs=PAPER_SNRS, kind: str = "awgn") -> ml_collections.ConfigDict:
    """The channel ('awgn' or 'rayleigh' block fading with a 'zf' or 'mmse' equaliser) and its SNR sets."""
    return ml_collections.ConfigDict(
        dict(kind=kind, equalizer="zf", train_snrs=tuple(train_snrs), eval_snrs=tuple(eval_snrs))
    )


def train(batch_size: int, log_every: int = 100, checkpoint_every: int = 2000) -> ml_collections.ConfigDict:
    """The training header; each stage adds its own section (whose `batch_size`, when set, overrides this one)."""
    return ml_collections.ConfigDict(
        dict(
            batch_size=batch_size,
            log_every=log_every,
            checkpoint_every=checkpoint_every,
            keep_checkpoints=3,
            grad_groups=unset(int),  # G: gradients summed over G fixed groups, equal on any device count dividing G
        )
    )


def stage(base_lr: float, epochs: int, *, scale_lr: bool = False, betas=(0.9, 0.999), **fields):
    """One training stage's optimiser section. `batch_size` None takes `train.batch_size`; `num_steps`, when
    set, overrides `epochs`; `scale_lr` multiplies `base_lr` by the global batch size (LDM's rule)."""
    fields.setdefault("batch_size", unset(int))
    return ml_collections.ConfigDict(
        dict(
            base_lr=base_lr,
            scale_lr=scale_lr,
            epochs=epochs,
            num_steps=unset(int),
            adam_b1=betas[0],
            adam_b2=betas[1],
            **fields,
        )
    )


def sampler(name: str = "ddpm", steps: int | None = None) -> ml_collections.ConfigDict:
    """The reverse chain (`casc_jax.diffusion`): `steps` None runs every step of the schedule."""
    return ml_collections.ConfigDict(
        dict(name=name, steps=steps if steps is not None else unset(int), eta=0.0, spacing="logsnr", dtype="float32")
    )


def evaluation(batch_size: int, **fields) -> ml_collections.ConfigDict:
    """The evaluation sweep: `num_images` None is the whole split."""
    return ml_collections.ConfigDict(dict(batch_size=batch_size, num_images=unset(int), **fields))


def apply_preset(
    c: ml_collections.ConfigDict, preset: str, presets: Mapping[str, Callable[[ml_collections.ConfigDict], None]]
) -> ml_collections.ConfigDict:
    """Apply the named preset (the part after ':' in --config=FILE:PRESET) and record it in `c.preset`."""
    if preset and preset not in presets:
        choices = ", ".join(repr(p) for p in ("", *presets))
        raise ValueError(f"unknown preset {preset!r}; choose one of {choices}")
    if preset:
        presets[preset](c)
    c.preset = preset
    return c
