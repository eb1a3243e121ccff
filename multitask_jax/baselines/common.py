"""What the learned multi-task baselines share: the channel-use budget and the system interface.

Budget (paper section V-C, "bounded by 20 Kbits"; the accounting of `multitask_jax.digital.budget`): every JSCC
baseline sends exactly as many complex channel uses per image as our multi-task system. Ours sends an
(H/16, W/16, C_out) grid (Swin f1 grid H/8, then the JSCC encoder's stride 2), so each baseline's encoder
ends on the same (H/16, W/16, C_out) grid with the same C_out: k = (H/16)(W/16) C_out / 2 at every image
size (294 at 224 x 224 with C_out = 3, i.e. 18,816 bits <= 20,000 as float32 reals; 2,304 at 768 x 512).
H and W must be multiples of 16.

`JSCCBaseline` offers the interface of `multitask_jax.system.MultiTaskSystem` that the train loop, the
evaluation sweep and the launcher modes use: `init`, `loss(params, batch, key)`, `__call__(params, image,
task, key, snr_db)`, `num_channel_uses`, `overhead_bits()`, `num_classes`, `with_image_size`. Encoders and
decoders are linen modules called as `encoder(x, snr_db, train=...)` and `decoder(y, snr_db, out_hw,
train=...)`; SNR-blind ones ignore the SNR.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from casc_jax import channel as ch
from multitask_jax import channel_budget, jscc
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION, check_task

Params = Mapping[str, Any]
DOWNSAMPLE = 16  # the multi-task system's channel grid: H/8 (Swin f1) then stride 2


def latent_hw(image_hw: Sequence[int]) -> tuple[int, int]:
    """(H/16, W/16) of an (H, W) image; ValueError unless both are multiples of 16."""
    h, w = (int(s) for s in image_hw)
    if h % DOWNSAMPLE or w % DOWNSAMPLE:
        raise ValueError(f"image size {(h, w)} must be a multiple of {DOWNSAMPLE} (the channel grid H/16 x W/16)")
    return h // DOWNSAMPLE, w // DOWNSAMPLE


def budget_channel_uses(image_hw: Sequence[int], channels: int) -> int:
    """k of the multi-task system at (H, W) with C_out = `channels` (multitask_jax.channel_budget.channel_uses)."""
    return channel_budget.channel_uses(image_hw, channels, downsample=2)


def output_image(h: jax.Array) -> jax.Array:
    """Decoder pre-activation -> image in [-1, 1] (2 sigmoid - 1, the [0, 1] sigmoid output of the papers)."""
    return 2.0 * nn.sigmoid(h) - 1.0


def snr_column(snr_db, batch: int) -> jax.Array:
    """SNR (scalar or (B,)) in dB -> (B, 1) float32, the side input of SNR-adaptive modules."""
    return jnp.broadcast_to(jnp.asarray(snr_db, jnp.float32).reshape(-1), (batch,))[:, None]


def link_fields(image_hw: Sequence[int], channels: int, channel_kind: str = "awgn", equalizer: str = "zf") -> dict:
    """The `JSCCBaseline` fields every baseline shares: its image shape, channel uses per position and channel."""
    return dict(
        image_shape=(int(image_hw[0]), int(image_hw[1]), 3),
        channels=channels,
        channel_kind=channel_kind,
        equalizer=equalizer,
    )


@dataclasses.dataclass(frozen=True)
class JSCCBaseline:
    """A learned JSCC baseline: encoder -> power normalisation -> channel -> decoder, for one `task`.

    Parameters: {'encoder', 'decoder'}. Reconstruction decoders return (B, H, W, 3) in [-1, 1],
    segmentation decoders (B, H, W, num_classes) logits.
    """

    name: str
    encoder: nn.Module
    decoder: nn.Module
    task: str
    image_shape: tuple[int, int, int]
    channels: int
    channel_kind: str = "awgn"
    equalizer: str = "zf"
    num_classes: int = 21

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return latent_hw(self.image_shape[:2]) + (self.channels,)

    @property
    def num_channel_uses(self) -> int:
        return budget_channel_uses(self.image_shape[:2], self.channels)

    def overhead_bits(self, bits_per_real: int = channel_budget.BITS_PER_REAL) -> int:
        return channel_budget.overhead_bits(self.num_channel_uses, bits_per_real)

    def with_image_size(self, image_hw: Sequence[int]) -> JSCCBaseline:
        """The same system at another (H, W) (the parameters do not depend on it)."""
        h, w = (int(s) for s in image_hw)
        latent_hw((h, w))
        return dataclasses.replace(self, image_shape=(h, w, 3))

    def init(self, key: jax.Array) -> dict:
        k_enc, k_dec = jax.random.split(key)
        x = jnp.zeros((1,) + self.image_shape)
        snr = jnp.zeros((1,))
        z = jnp.zeros((1,) + self.latent_shape)
        return {
            "encoder": self.encoder.init(k_enc, x, snr)["params"],
            "decoder": self.decoder.init(k_dec, z, snr, self.image_shape[:2])["params"],
        }

    def transmit(self, params: Params, x: jax.Array, snr_db, *, train=False, rngs=None) -> jax.Array:
        """I (B, H, W, 3) -> channel input (B, H/16, W/16, C_out), unit power per complex symbol."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected images (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}")
        z = self.encoder.apply({"params": params["encoder"]}, x, snr_db, train=train, rngs=rngs)
        if tuple(z.shape[1:]) != self.latent_shape:
            raise ValueError(f"{self.name} encoder gave {tuple(z.shape[1:])}, the budget needs {self.latent_shape}")
        return ch.normalize_power(z)

    def channel(self, key: jax.Array, z: jax.Array, snr_db) -> jax.Array:
        return ch.transmit(key, z, snr_db, self.channel_kind, self.equalizer, normalize=False)

    def receive(self, params: Params, y: jax.Array, snr_db, *, train=False, rngs=None) -> jax.Array:
        return self.decoder.apply(
            {"params": params["decoder"]}, y, snr_db, self.image_shape[:2], train=train, rngs=rngs
        )

    def __call__(self, params: Params, image, task: str, key, snr_db, sampler=None, *, train=False, rngs=None):
        """End to end: I -> x -> y -> reconstruction or logits (`sampler` is ignored: no diffusion)."""
        if check_task(task) != self.task:
            raise ValueError(f"{self.name} is a {self.task} system, not {task}")
        z = self.transmit(params, image, snr_db, train=train, rngs=rngs)
        return self.receive(params, self.channel(key, z, snr_db), snr_db, train=train, rngs=rngs)

    def loss(self, params: Params, batch: Mapping[str, jax.Array], key: jax.Array) -> jax.Array:
        """Training loss of `batch` {image, snr[, mask]}: L_R (eq. 5, MSE on [-1, 1]) or L_S (eq. 6)."""
        k_ch, k_drop = jax.random.split(key)
        out = self(params, batch["image"], self.task, k_ch, batch["snr"], train=True, rngs={"dropout": k_drop})
        if self.task == SEGMENTATION:
            return jscc.segmentation_loss(out, batch["mask"])
        return jnp.mean(jnp.square(out.astype(jnp.float32) - batch["image"].astype(jnp.float32)))


def check_reconstruction(task: str) -> str:
    if check_task(task) != RECONSTRUCTION:
        raise ValueError(f"this baseline reconstructs images; task {task!r} is not supported")
    return task
