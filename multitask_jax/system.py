"""The multi-task generative semantic communication system (paper sections II to IV).

    transmitter: I -> Swin (f1, f2, f3) -> selection f_R | f_S -> JSCC encoder -> x (unit power)
    channel:     y = h x + n (casc_jax.channel: AWGN or Rayleigh block fading, SNR per sample)
    receiver:    y -> receiver KB g_R | g_S -> DiT diffusion decoder (reconstruction, scanned sampler)
                                          or segmentation decoder (21 VOC class logits)

`MultiTaskSystem` holds the modules and static configuration; every method is a pure function of an
explicit parameter tree {'swin', 'selection', 'encoder', 'receiver_kb', 'seg_decoder', 'dit'}. The task is
static: 'reconstruction' or 'segmentation' (multitask_jax.task_kb maps free text to one of them).
Both losses train the whole chain end to end through the channel, as in the paper (section V-A).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from casc_jax import channel as ch
from casc_jax import diffusion
from multitask_jax import channel_budget, jscc
from multitask_jax.dit import DiT, DiTConfig, eps_from_x0
from multitask_jax.swin import FeatureSelection, SwinFeatureExtractor
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION, TASKS, check_task

Params = Mapping[str, Any]
PARTS = ("swin", "selection", "encoder", "receiver_kb", "seg_decoder", "dit")


@dataclasses.dataclass(frozen=True)
class MultiTaskSystem:
    """The system built by `build_multitask`; `image_shape` is (H, W, 3) with H, W multiples of 8."""

    swin: SwinFeatureExtractor
    selection: FeatureSelection
    encoder: jscc.JSCCEncoder
    receiver_kb: jscc.ReceiverKB
    seg_decoder: jscc.SegmentationDecoder
    dit: DiT
    schedule: diffusion.Schedule
    image_shape: tuple[int, int, int]
    channel_kind: str = "awgn"
    equalizer: str = "zf"
    clip_x0: float | None = 1.0

    tasks = TASKS

    @property
    def signal_shape(self) -> tuple[int, int, int]:
        """(h, w, C_out) of the channel input x."""
        return channel_budget.signal_grid(self.image_shape[:2], self.encoder.downsample) + (self.encoder.channels,)

    @property
    def num_channel_uses(self) -> int:
        """k, complex symbols per image (the same for both tasks: the JSCC encoder is shared)."""
        return channel_budget.channel_uses(self.image_shape[:2], self.encoder.channels, self.encoder.downsample)

    @property
    def num_classes(self) -> int:
        """Segmentation classes (21 VOC classes)."""
        return self.seg_decoder.num_classes

    def overhead_bits(self, bits_per_real: int = channel_budget.BITS_PER_REAL) -> int:
        """Bits per image under the stated accounting (see multitask_jax.jscc)."""
        return channel_budget.overhead_bits(self.num_channel_uses, bits_per_real)

    # -- parameters ---------------------------------------------------------------------------
    def init(self, key: jax.Array) -> dict:
        """Parameters of every part (both tasks' branches are created)."""
        keys = dict(zip(PARTS, jax.random.split(key, len(PARTS)), strict=True))
        image = jnp.zeros((1,) + self.image_shape)
        feats = jax.eval_shape(self.swin.init_with_output, keys["swin"], image)[0]
        feats = [jnp.zeros(f.shape, f.dtype) for f in feats]
        fshape = (1,) + channel_budget.signal_grid(self.image_shape[:2], 1) + (self.selection.features,)
        y = jnp.zeros((1,) + self.signal_shape)
        g = jnp.zeros(y.shape[:3] + (self.receiver_kb.hidden,))
        t = jnp.zeros((1,), jnp.int32)
        return {
            "swin": self.swin.init(keys["swin"], image)["params"],
            "selection": self.selection.init(keys["selection"], feats, RECONSTRUCTION)["params"],
            "encoder": self.encoder.init(keys["encoder"], image, jnp.zeros(fshape))["params"],
            "receiver_kb": self.receiver_kb.init(keys["receiver_kb"], y, RECONSTRUCTION)["params"],
            "seg_decoder": self.seg_decoder.init(keys["seg_decoder"], y, g, self.image_shape[:2])["params"],
            "dit": self.dit.init(keys["dit"], image, t, y, g)["params"],
        }

    # -- transmitter --------------------------------------------------------------------------
    def features(self, params: Params, image: jax.Array, task: str, *, train=False, rngs=None) -> jax.Array:
        """Transmitter source KB: I (B, H, W, 3) -> f_R or f_S (B, H/8, W/8, C')."""
        check_task(task)
        self._check_images(image)
        feats = self.swin.apply({"params": params["swin"]}, image, train=train, rngs=rngs)
        return self.selection.apply({"params": params["selection"]}, feats, task)

    def transmit(self, params: Params, image: jax.Array, task: str, *, train=False, rngs=None) -> jax.Array:
        """Transmitter: I -> x (B, h, w, C_out) with unit average power per complex symbol."""
        f = self.features(params, image, task, train=train, rngs=rngs)
        return self.encoder.apply({"params": params["encoder"]}, image, f)

    def channel(self, key: jax.Array, x: jax.Array, snr_db: jax.Array | float) -> jax.Array:
        """x -> y through the configured channel at `snr_db` (scalar or (B,)), eq. (1)."""
        return ch.transmit(key, x, snr_db, self.channel_kind, self.equalizer, normalize=False)

    # -- receiver -----------------------------------------------------------------------------
    def receiver_features(self, params: Params, y: jax.Array, task: str) -> jax.Array:
        """Receiver source KB: y -> g_R (r1 + r2) or g_S (r1), (B, h, w, hidden)."""
        return self.receiver_kb.apply({"params": params["receiver_kb"]}, y, check_task(task))

    def segment(self, params: Params, y: jax.Array, *, train=False, rngs=None) -> jax.Array:
        """y -> segmentation logits (B, H, W, num_classes)."""
        g = self.receiver_features(params, y, SEGMENTATION)
        return self.seg_decoder.apply(
            {"params": params["seg_decoder"]}, y, g, self.image_shape[:2], train=train, rngs=rngs
        )

    def x0_fn(self, params: Params, y: jax.Array, g: jax.Array | None = None):
        """x0_hat(x_t, t) closed over params, y and g_R (computed once here, not per step)."""
        if g is None:
            g = self.receiver_features(params, y, RECONSTRUCTION)
        return lambda x_t, t: self.dit.apply({"params": params["dit"]}, x_t, t, y, g)

    def denoiser_fn(self, params: Params, y: jax.Array, g: jax.Array | None = None):
        """eps_fn(x_t, t) for casc_jax.diffusion.sample: the DiT's x0 prediction (clipped to
        [-clip_x0, clip_x0]) converted to noise by `eps_from_x0` (`g`: g_R when already computed)."""
        x0 = self.x0_fn(params, y, g)

        def eps_fn(x_t, t):
            pred = x0(x_t, t)
            if self.clip_x0 is not None:
                pred = jnp.clip(pred, -self.clip_x0, self.clip_x0)
            return eps_from_x0(self.schedule, x_t, t, pred)

        return eps_fn

    def reconstruct(self, params: Params, y: jax.Array, key: jax.Array, sampler: Mapping | None = None):
        """y -> reconstruction (B, H, W, 3) by the scanned reverse chain (`sampler`: name, steps, ...)."""
        spec = diffusion.SamplerSpec.of(sampler)
        if spec.compute_dtype is not None:
            raise ValueError(f"the DiT decoder samples in float32 only; got sampler dtype {spec.dtype}")
        shape = (y.shape[0],) + self.image_shape
        return diffusion.sample(self.denoiser_fn(params, y), self.schedule, shape, key, spec)

    def receive(
        self,
        params: Params,
        y: jax.Array,
        task: str,
        key: jax.Array | None = None,
        sampler: Mapping | None = None,
    ) -> jax.Array:
        """Receiver: y -> reconstruction (B, H, W, 3) in [-1, 1] or segmentation logits (B, H, W, K)."""
        if check_task(task) == SEGMENTATION:
            return self.segment(params, y)
        if key is None:
            raise ValueError("reconstruction samples the diffusion decoder: pass a PRNG key")
        return self.reconstruct(params, y, key, sampler)

    def __call__(self, params: Params, image, task: str, key, snr_db, sampler: Mapping | None = None):
        """End to end: I -> x -> y -> reconstruction or logits."""
        k_ch, k_rx = jax.random.split(key)
        y = self.channel(k_ch, self.transmit(params, image, task), snr_db)
        return self.receive(params, y, task, k_rx, sampler)

    # -- objectives ---------------------------------------------------------------------------
    def recon_loss(self, params: Params, image: jax.Array, key: jax.Array, snr_db, *, train: bool = True):
        """L_R (eq. 5) through the diffusion parameterisation: MSE between I and x0_hat(x_t, t | y, g_R),
        with t uniform in [0, T) and x_t = q_sample(I, t). Gradients reach every part on the path."""
        k_ch, k_t, k_eps, k_drop = jax.random.split(key, 4)
        rngs = {"dropout": k_drop} if train else None
        y = self.channel(k_ch, self.transmit(params, image, RECONSTRUCTION, train=train, rngs=rngs), snr_db)
        t = jax.random.randint(k_t, (image.shape[0],), 0, self.schedule.num_timesteps)
        x_t = diffusion.q_sample(self.schedule, image, t, jax.random.normal(k_eps, image.shape))
        pred = self.x0_fn(params, y)(x_t, t)
        return jnp.mean(jnp.square(pred.astype(jnp.float32) - image.astype(jnp.float32)))

    def seg_loss(self, params: Params, image, labels, key: jax.Array, snr_db, *, train: bool = True):
        """L_S (eq. 6): per-pixel cross-entropy of the received logits, VOC label 255 ignored."""
        k_ch, k_drop, k_dp = jax.random.split(key, 3)
        x = self.transmit(params, image, SEGMENTATION, train=train, rngs={"dropout": k_dp} if train else None)
        y = self.channel(k_ch, x, snr_db)
        logits = self.segment(params, y, train=train, rngs={"dropout": k_drop} if train else None)
        return jscc.segmentation_loss(logits, labels)

    def _check_images(self, x: jax.Array) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}"
            )


# ----------------------------------------------------------------------------------------------
# Construction.

def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = (int(s) for s in size)
    return h, w


def build_multitask(config: ml_collections.ConfigDict | Mapping) -> MultiTaskSystem:
    """`MultiTaskSystem` from `configs.multitask_models_base.model_config(...)`-shaped sections (a ConfigDict or a
    nested mapping)."""
    cfg = ml_collections.ConfigDict(dict(config))
    h, w = _pair(cfg.image_size)
    if h % 8 or w % 8:
        raise ValueError(f"image_size {(h, w)} must be a multiple of 8 (the Swin f1 grid)")
    s = cfg.swin
    if 2 * s.patch_size != channel_budget.FEATURE_STRIDE:
        raise ValueError(f"swin.patch_size must be 4 (f1 on the /8 grid), got {s.patch_size}")
    d = cfg.diffusion
    dit_cfg = DiTConfig(**dict(cfg.dit))
    return MultiTaskSystem(
        swin=SwinFeatureExtractor(
            patch_size=s.patch_size,
            embed_dim=s.embed_dim,
            depths=tuple(s.depths),
            num_heads=tuple(s.num_heads),
            window=s.window,
            mlp_ratio=s.mlp_ratio,
            drop_path_rate=s.drop_path_rate,
        ),
        selection=FeatureSelection(cfg.selection.features),
        encoder=jscc.JSCCEncoder(cfg.jscc.channels, cfg.jscc.hidden, cfg.jscc.downsample),
        receiver_kb=jscc.ReceiverKB(cfg.receiver.hidden),
        seg_decoder=jscc.SegmentationDecoder(cfg.seg.hidden, cfg.seg.num_classes, cfg.seg.dropout),
        dit=DiT(dit_cfg),
        schedule=diffusion.make_schedule(d.schedule, d.num_timesteps, d.beta_start, d.beta_end),
        image_shape=(h, w, 3),
        channel_kind=cfg.channel.kind,
        equalizer=cfg.channel.equalizer,
        clip_x0=cfg.get("clip_x0", 1.0),
    )
