"""JPEG + LDPC + QAM (16/64) + FCN: the separated digital segmentation baseline, and the digital
reconstruction curve (paper section V: baselines of Figs. 4, 5 and 7).

Transmitter: the image is JPEG-coded at the highest quality that fits the budget's source bits, LDPC-coded
(5G NR) and QAM-modulated (`multitask_jax.digital.link.DigitalLink`). Receiver: LDPC decoding, JPEG decoding,
then an FCN segments the decoded image. An image whose LDPC blocks fail their parity checks, or whose JPEG
does not decode, is a failure: it is counted and reported (`failures`, `delivered`), and it is left out
of the scores; no image is made up for it. mIoU and PSNR are over the delivered images, null when none
was delivered (the paper omits those points).

Budget: `multitask_jax.digital.budget.Budget` with `digital.budget_bits` (the paper's 20 Kbit) and its reading
'bits': Q_m k coded bits on the channel, i.e. 5,000 16QAM or 3,333 64QAM symbols per image at 20,000
bits, against our system's 294 analog channel uses (18,816 bits as float32 reals); see budget.py for why.

FCN (Long, Shelhamer, Darrell 2015; the paper says "fully-connected network" and cites ResNet [23], we
read it as the fully convolutional network). From the original: a convolutional encoder, 1 x 1 score
layers at several strides added coarse to fine (FCN-8s style skips), upsampling to the input size. Our
choices: four stride-2 stages (3 x 3 conv, GroupNorm, ReLU, a residual block) instead of VGG-16, skips at
/16, /8 and /4, bilinear upsampling instead of learned deconvolutions, dropout 0.1; it is trained on
clean images with eq. (6) by the multi-task train loop (the SNR drawn there is unused: the digital link
is not differentiable, and a delivered JPEG is bit-exact).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from casc_jax.nn.layers import ResBlock, group_norm
from multitask_jax import jscc
from multitask_jax.digital.budget import Budget
from multitask_jax.digital.link import DigitalLink
from multitask_jax.tasks import SEGMENTATION, check_task

MODULATIONS = ("16qam", "64qam")


@functools.cache
def _link(budget: Budget, modulation: str, code_rate: float, channel: str, equalizer: str, iterations: int):
    return DigitalLink(budget, modulation, code_rate, channel, equalizer, iterations=iterations)


class FCN(nn.Module):
    """I (B, H, W, 3) -> logits (B, H, W, num_classes); H, W multiples of 16."""

    num_classes: int = 21
    widths: Sequence[int] = (64, 128, 256, 512)
    dropout: float = 0.1

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        feats, h = [], x
        for i, width in enumerate(self.widths):
            h = nn.Conv(width, (3, 3), strides=2, name=f"down{i}_conv")(h)
            h = ResBlock(width, name=f"res{i}")(nn.relu(group_norm(width, f"down{i}_norm")(h)))
            feats.append(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(feats[-1])
        score = nn.Conv(self.num_classes, (1, 1), name="score16")(h)
        for name, f in (("score8", feats[2]), ("score4", feats[1])):  # coarse to fine: /8, then /4
            score = jax.image.resize(score, f.shape[:3] + (self.num_classes,), "bilinear")
            score = score + nn.Conv(self.num_classes, (1, 1), name=name)(f)
        return jax.image.resize(score, (x.shape[0], *x.shape[1:3], self.num_classes), "bilinear")


@dataclasses.dataclass(frozen=True)
class FCNDigital:
    """The FCN (parameters {'fcn'}) and one `DigitalLink` per modulation, within one `Budget`."""

    fcn: FCN
    image_shape: tuple[int, int, int]
    budget: Budget
    modulations: tuple[str, ...] = MODULATIONS
    code_rate: float = 0.5
    channel_kind: str = "awgn"
    equalizer: str = "zf"
    iterations: int = 20
    task: str = SEGMENTATION

    @property
    def num_classes(self) -> int:
        return self.fcn.num_classes

    def link(self, modulation: str) -> DigitalLink:
        """The link of `modulation` (one instance per setting, so its jitted chain compiles once)."""
        return _link(self.budget, modulation, self.code_rate, self.channel_kind, self.equalizer, self.iterations)

    def budget_fields(self, modulation: str) -> dict:
        """Per-image channel uses and bits of `modulation` (for the records)."""
        plan = self.link(modulation).plan
        return {
            "channel": self.channel_kind,
            "modulation": modulation,
            "code_rate": self.code_rate,
            "budget_reading": self.budget.reading,
            "channel_uses": plan.channel_uses,
            "overhead_bits": plan.blocks * plan.e,
            "source_bits": plan.source_bits,
        }

    def init(self, key: jax.Array) -> dict:
        return {"fcn": self.fcn.init(key, jnp.zeros((1,) + self.image_shape))["params"]}

    def segment(self, params, images: jax.Array, *, train=False, rngs=None) -> jax.Array:
        return self.fcn.apply({"params": params["fcn"]}, images, train=train, rngs=rngs)

    def loss(self, params, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
        """Eq. (6) of the FCN on clean images (`batch['snr']` is not used)."""
        logits = self.segment(params, batch["image"], train=True, rngs={"dropout": key})
        return jscc.segmentation_loss(logits, batch["mask"])

    def with_image_size(self, image_hw: Sequence[int]) -> FCNDigital:
        return dataclasses.replace(self, image_shape=(int(image_hw[0]), int(image_hw[1]), 3))

    def __call__(self, params, image, task: str, key=None, snr_db=None, sampler=None):
        """Segmentation of images as received (the digital link runs on the host, see `transmit_images`)."""
        if check_task(task) != SEGMENTATION:
            raise ValueError("the FCN segments images; the digital reconstruction needs no model")
        return self.segment(params, image)


def build(cfg, image_hw: Sequence[int], digital, channel_kind: str = "awgn", equalizer: str = "zf") -> FCNDigital:
    """From `cfg` = model.fcn {widths, dropout, num_classes} and `digital` {budget_bits, modulations,
    code_rate, iterations}."""
    h, w = (int(s) for s in image_hw)
    if h % 16 or w % 16:
        raise ValueError(f"the FCN downsamples by 16: image size {(h, w)} must be a multiple of 16")
    mods = tuple(digital.modulations)
    for m in mods:
        if m not in ("qpsk", *MODULATIONS):
            raise ValueError(f"unknown modulation {m!r}; choose from qpsk, {', '.join(MODULATIONS)}")
    return FCNDigital(
        fcn=FCN(int(cfg.num_classes), tuple(cfg.widths), float(cfg.dropout)),
        image_shape=(h, w, 3),
        budget=Budget(bits=int(digital.budget_bits)),
        modulations=mods,
        code_rate=float(digital.code_rate),
        channel_kind=channel_kind,
        equalizer=equalizer,
        iterations=int(digital.iterations),
    )
