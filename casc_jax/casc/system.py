"""The CASC system: transmitter (E, f) -> channel -> receiver (f_CAN, U-Net sampler, D).

`CASC` holds the modules and static configuration; every method is a pure function of an explicit
parameter tree {'autoencoder', 'cond_encoder', 'can', 'unet'} and can be jitted. The transmitter
and the receiver can be run alone.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from casc_jax import channel as ch
from casc_jax import diffusion
from casc_jax.casc.autoencoder import VQAutoencoder
from casc_jax.casc.can import CAN, dynamic_variables, group_layers, kernel_shapes
from casc_jax.casc.unet import UNet
from casc_jax.nn.dynamic import DYNAMIC
from casc_jax.nn.layers import module_from_config

Params = Mapping[str, Any]
STAGE2_PARTS = ("cond_encoder", "can", "unet")
CPU_DECODE_BATCH = 16  # the decoder's chunk on CPU: keeps its activations in cache (configs/casc_base.py)


class ConditionEncoder(nn.Module):
    """f: Z (B, h, w, C) -> C (B, h, w, L), one L x 3 x 3 / 1 conv (eq. 2)."""

    channels: int

    @nn.compact
    def __call__(self, z):
        return nn.Conv(self.channels, (3, 3), name="conv")(z)


@dataclasses.dataclass(frozen=True)
class CASC:
    """CASC built from a config; see `build_casc`."""

    autoencoder: VQAutoencoder
    cond_encoder: ConditionEncoder
    unet: UNet
    can_groups: Mapping
    schedule: diffusion.Schedule
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    channel_kind: str = "awgn"
    equalizer: str = "zf"
    prediction: str = "eps"  # what the U-Net outputs: 'eps', 'x0' or 'v' (diffusion.prediction)
    decode_batch: int = 0  # the decoder runs in chunks of this many images (0: the whole batch at once)

    @property
    def condition_shape(self) -> tuple[int, int, int]:
        return self.latent_shape[:2] + (self.cond_encoder.channels,)

    @property
    def can(self) -> CAN | None:
        return CAN(self.can_groups) if self.can_groups else None

    @property
    def num_channel_uses(self) -> int:
        """Complex symbols per image: d / 2."""
        return math.prod(self.condition_shape) // 2

    # -- parameters ---------------------------------------------------------------------------
    def init(self, key: jax.Array) -> dict:
        k_ae, k_f, k_u, k_c = jax.random.split(key, 4)
        x = jnp.zeros((1,) + self.image_shape)
        z = jnp.zeros((1,) + self.latent_shape)
        c = jnp.zeros((1,) + self.condition_shape)
        params = {
            "autoencoder": self.autoencoder.init(k_ae, x)["params"],
            "cond_encoder": self.cond_encoder.init(k_f, z)["params"],
            "unet": self.unet.init(k_u, z, jnp.zeros((1,), jnp.int32), c)["params"],
            "can": {},
        }
        if self.can is not None:
            params["can"] = self.can.init(k_c, c)["params"]
        return params

    # -- transmitter --------------------------------------------------------------------------
    def encode(self, params: Params, x: jax.Array) -> jax.Array:
        """X (B, H, W, 3) in [-1, 1] -> Z (B, h, w, C), eq. (1)."""
        self._check_images(x)
        return self.autoencoder.apply({"params": params["autoencoder"]}, x, method=VQAutoencoder.encode)

    def condition(self, params: Params, z: jax.Array) -> jax.Array:
        """Z -> power-normalised condition signal C (B, h, w, L), eq. (2)."""
        return ch.normalize_power(self.cond_encoder.apply({"params": params["cond_encoder"]}, z))

    def transmit(self, params: Params, x: jax.Array) -> jax.Array:
        """Transmitter: image -> channel input C (B, h, w, L) with unit power per complex symbol."""
        return self.condition(params, self.encode(params, x))

    def channel(self, key: jax.Array, c: jax.Array, snr_db: jax.Array | float) -> jax.Array:
        """C -> C_hat through the configured channel at `snr_db` (scalar or (B,)), eq. (3)."""
        return ch.transmit(key, c, snr_db, self.channel_kind, self.equalizer, normalize=False)

    # -- receiver -----------------------------------------------------------------------------
    def dynamic_weights(self, params: Params, c_hat: jax.Array) -> dict:
        """W = f_CAN(C_hat) as the U-Net's `dynamic` variable tree, eq. (4)."""
        if self.can is None:
            return {}
        generated = self.can.apply({"params": params["can"]}, c_hat)
        return dynamic_variables(generated, self.can_groups)

    def predict(self, params: Params, z_t, t, c_hat, dynamic: Mapping, *, train=False, rngs=None, dtype=None):
        """U_theta(Z_t, C_hat, W, t): the network output, a `prediction` (eps in eq. 10, or x0 or v)."""
        unet = self.unet if dtype is None else self.unet.clone(dtype=dtype)
        variables = {"params": params["unet"]}
        if dynamic:
            variables[DYNAMIC] = dynamic
        return unet.apply(variables, z_t, t, c_hat, train=train, rngs=rngs)

    def denoiser_fn(self, params: Params, c_hat: jax.Array, dtype=None):
        """eps_fn(z_t, t) closed over params, C_hat and the CAN weights (computed once here)."""
        dynamic = self.dynamic_weights(params, c_hat)
        return lambda z_t, t: self.eps(params, z_t, t, c_hat, dynamic, dtype=dtype)

    def eps(self, params: Params, z_t, t, c_hat, dynamic: Mapping, *, dtype=None):
        """The noise prediction eps_hat(Z_t, t | C_hat, W), whatever the U-Net was trained to output."""
        pred = self.predict(params, z_t, t, c_hat, dynamic, dtype=dtype)
        return diffusion.eps_from_prediction(self.schedule, z_t, t, pred, self.prediction)

    def denoise(self, params: Params, c_hat: jax.Array, key: jax.Array, sampler: Mapping | None = None):
        """C_hat -> Z_tilde by the scanned reverse chain, eq. (5). `sampler`: a `diffusion.SamplerSpec` or
        a config mapping of its fields (None: T-step DDPM)."""
        spec = diffusion.SamplerSpec.of(sampler)
        shape = (c_hat.shape[0],) + self.latent_shape
        return diffusion.sample(self.denoiser_fn(params, c_hat, spec.compute_dtype), self.schedule, shape, key, spec)

    def decode(self, params: Params, z: jax.Array) -> jax.Array:
        """Z_tilde -> X_hat (quantise, then D), eq. (6); in chunks of `decode_batch` images (a `lax.map`,
        the rest of an uneven batch as one more call), which keeps each chunk's activations in cache."""

        def decode_all(zz):
            return self.autoencoder.apply({"params": params["autoencoder"]}, zz, method=VQAutoencoder.decode)

        b, n = self.decode_batch, z.shape[0]
        if not b or n <= b:
            return decode_all(z)
        whole = n // b * b
        chunks = jax.lax.map(decode_all, z[:whole].reshape((whole // b, b) + z.shape[1:]))
        x_hat = chunks.reshape((whole,) + chunks.shape[2:])
        return x_hat if whole == n else jnp.concatenate([x_hat, decode_all(z[whole:])])

    def receive(self, params: Params, c_hat: jax.Array, key: jax.Array, sampler: Mapping | None = None):
        """Receiver: C_hat (B, h, w, L) -> X_hat (B, H, W, 3)."""
        return self.decode(params, self.denoise(params, c_hat, key, sampler))

    def __call__(self, params: Params, x, key, snr_db, sampler: Mapping | None = None):
        """End to end: X -> C -> C_hat -> X_hat."""
        k_ch, k_rx = jax.random.split(key)
        return self.receive(params, self.channel(k_ch, self.transmit(params, x), snr_db), k_rx, sampler)

    # -- stage-2 objective ----------------------------------------------------------------------
    def denoiser_loss(self, params: Params, x: jax.Array, key: jax.Array, snr_db: jax.Array) -> jax.Array:
        """L_denoiser (eq. 10) for a batch: gradients reach f, CAN and U-Net, never the autoencoder."""
        k_ch, k_t, k_eps, k_drop = jax.random.split(key, 4)
        frozen = dict(params, autoencoder=jax.lax.stop_gradient(params["autoencoder"]))
        z0 = jax.lax.stop_gradient(self.encode(frozen, x))
        c_hat = self.channel(k_ch, self.condition(frozen, z0), snr_db)
        t = jax.random.randint(k_t, (x.shape[0],), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(k_eps, z0.shape)
        z_t = diffusion.q_sample(self.schedule, z0, t, noise)
        dynamic = self.dynamic_weights(frozen, c_hat)
        pred = self.predict(frozen, z_t, t, c_hat, dynamic, train=True, rngs={"dropout": k_drop})
        target = diffusion.prediction_target(self.schedule, z0, noise, t, self.prediction)
        return jnp.mean(diffusion.epsilon_loss(pred, target))

    def _check_images(self, x: jax.Array) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}), got {tuple(x.shape)}"
            )


def _tuple(values: Sequence) -> tuple:
    return tuple(values) if values is not None else ()


def build_casc(config: ml_collections.ConfigDict) -> CASC:
    """CASC from a config with sections data, autoencoder, unet, can, diffusion, channel and `cr`."""
    size = config.data.image_size
    image_shape = (size, size, 3)
    ae_cfg = config.autoencoder
    autoencoder = module_from_config(VQAutoencoder, ae_cfg)
    factor = autoencoder.downsampling
    if size % factor:
        raise ValueError(f"image size {size} is not divisible by the autoencoder's downsampling {factor}")
    latent_shape = (size // factor, size // factor, ae_cfg.embed_dim)
    channels = ch.condition_channels(config.cr, image_shape, latent_shape[:2])
    unet = module_from_config(UNet, config.unet, out_channels=ae_cfg.embed_dim)
    groups = {}
    if config.can.layers:
        abstract = jax.eval_shape(
            unet.init,
            jax.random.key(0),
            jnp.zeros((1,) + latent_shape),
            jnp.zeros((1,), jnp.int32),
            jnp.zeros((1,) + latent_shape[:2] + (channels,)),
        )["params"]
        groups = group_layers(kernel_shapes(abstract, _tuple(config.can.layers)), config.can.share)
    d = config.diffusion
    schedule = diffusion.make_schedule(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)
    return CASC(
        autoencoder=autoencoder,
        cond_encoder=ConditionEncoder(channels),
        unet=unet,
        can_groups=groups,
        schedule=schedule,
        image_shape=image_shape,
        latent_shape=latent_shape,
        channel_kind=config.channel.kind,
        equalizer=config.channel.equalizer,
        prediction=diffusion.check_prediction(config.diffusion.get("prediction", "eps")),
        decode_batch=_decode_batch(config),
    )


def _decode_batch(config) -> int:
    """`receiver.decode_batch`, checked to be >= 0; unset (or no receiver section): CPU_DECODE_BATCH on CPU,
    else 0 (the whole batch)."""
    b = config.get("receiver", {}).get("decode_batch")
    if b is None:
        return CPU_DECODE_BATCH if jax.default_backend() == "cpu" else 0
    b = int(b)
    if b < 0:
        raise ValueError(f"receiver.decode_batch must be 0 (the whole batch) or a positive chunk size, got {b}")
    return b
