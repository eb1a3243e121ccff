"""DiffSC (Jiang et al., ICASSP 2024): a pixel-space DDPM that refines the DeepJSCC reconstruction.

Transmitter and channel are DeepJSCC's (same CR accounting as CASC, see `deepjscc`). The receiver runs
the DeepJSCC decoder, X_jscc = D_jscc(Y), and then a DDPM reverse chain on the image grid,
    eps_theta(X_t, t | X_jscc) = U-Net(concat[X_t, X_jscc] on channels, t),
from X_T ~ N(0, I) to X_0 = X_hat, conditioned on X_jscc at every step (one `lax.scan`).
DiffSC is trained on top of a trained, frozen DeepJSCC: only the U-Net receives gradients.

What the CASC paper says about DiffSC: it "uses a denoiser based on the diffusion probabilistic model
(DPM) to reconstruct high-quality images by conditioning on the output of the DeepJSCC decoder", and
CASC compares at T = 1000 with DiffSC timed at 301.80 ms/image (RTX A6000, batch 256). The DiffSC paper
itself was not available to us; every other detail is a choice, made as follows:
- Conditioning: concatenation of X_jscc with X_t on the channel axis (SR3 / conditional DDPM style;
  the same mechanism as CASC's U-Net, without CAN). No explicit SNR input: the SNR reaches the
  denoiser only through X_jscc.
- Denoiser: `casc_jax.casc.unet.UNet` at the DDPM CIFAR-10 widths: ch 128, ch_mult (1, 2, 2, 2), 2 res
  blocks per level, self-attention at 16 x 16 (downsampling factor 2) and in the middle, one head
  (head_dim 256 >= the width at those levels), dropout 0.1; zero-initialised last convs as in DDPM.
- Diffusion: DDPM's "linear" schedule beta_t = linspace(1e-4, 0.02, T), T = 1000; epsilon prediction
  with the plain (unweighted) MSE loss L_simple; t uniform in {0, ..., T-1}.
- Sampling: DDPM ancestral sampling with all T steps by default (any sampler of `casc_jax.diffusion`
  may be chosen); the predicted X_0 is clipped to [-1, 1] at every step (DDPM's pixel-space
  `clip_denoised`) and the output is clipped to [-1, 1].
- Training data for the denoiser: X_jscc is produced on the fly by the frozen DeepJSCC through the
  channel at the training SNR (the same SNR set as CASC), so the denoiser sees the real distortions.
- The frozen DeepJSCC is the MSE-trained one (DiffSC builds on DeepJSCC's distortion-optimised output).

Parameters: {'deepjscc': {'encoder', 'decoder'}, 'unet'}. Only 'unet' is trainable (`TRAINABLE`).

Config (ml_collections, read by `build_diffsc`): every field of `build_deepjscc` plus
  diffsc.unet.{ch, ch_mult, num_res_blocks, attn_resolutions, head_dim, dropout}
                          attn_resolutions as downsampling factors (2 = 16 x 16 on 32 x 32 images)
  diffsc.clip_x0          1.0 (None disables the per-step clipping)
  diffusion.{schedule, num_timesteps, beta_start, beta_end}  'linear', 1000, 1e-4, 0.02
The sampler is chosen per call (`receive(..., sampler={'name', 'steps', 'eta', 'spacing', 'dtype',
'clip_x0'})`, the same mapping as CASC's `config.sampler`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from casc_jax import diffusion
from casc_jax.casc.baselines.deepjscc import DeepJSCC, build_deepjscc
from casc_jax.casc.unet import UNet
from casc_jax.nn.layers import module_from_config

Params = Mapping[str, Any]
TRAINABLE = ("unet",)


@dataclasses.dataclass(frozen=True)
class DiffSC:
    """DiffSC built from a config; see `build_diffsc`."""

    deepjscc: DeepJSCC
    unet: UNet
    schedule: diffusion.Schedule
    clip_x0: float | None = 1.0
    prediction: str = "eps"  # what the U-Net outputs: 'eps', 'x0' or 'v' (diffusion.prediction)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.deepjscc.image_shape

    @property
    def num_channel_uses(self) -> int:
        """Complex symbols per image: DeepJSCC's d / 2."""
        return self.deepjscc.num_channel_uses

    # -- parameters ---------------------------------------------------------------------------
    def init(self, key: jax.Array, deepjscc_params: Params | None = None) -> dict:
        """Fresh parameters; pass a trained DeepJSCC's {'encoder', 'decoder'} to build on it."""
        k_jscc, k_unet = jax.random.split(key)
        x = jnp.zeros((1,) + self.image_shape)
        return {
            "deepjscc": dict(deepjscc_params) if deepjscc_params is not None else self.deepjscc.init(k_jscc),
            "unet": self.unet.init(k_unet, x, jnp.zeros((1,), jnp.int32), x)["params"],
        }

    # -- transmitter and channel (DeepJSCC's) -----------------------------------------------------
    def transmit(self, params: Params, x: jax.Array) -> jax.Array:
        """X (B, H, W, 3) in [-1, 1] -> channel input (B, H/4, W/4, c), unit power per complex symbol."""
        return self.deepjscc.transmit(params["deepjscc"], x)

    def channel(self, key: jax.Array, z: jax.Array, snr_db: jax.Array | float) -> jax.Array:
        return self.deepjscc.channel(key, z, snr_db)

    # -- receiver -------------------------------------------------------------------------------
    def condition(self, params: Params, y: jax.Array) -> jax.Array:
        """Y -> X_jscc (B, H, W, 3) in [-1, 1]: the frozen DeepJSCC decoder output (no gradient)."""
        frozen = jax.lax.stop_gradient(params["deepjscc"])
        return jax.lax.stop_gradient(self.deepjscc.receive(frozen, y))

    def predict(self, params: Params, x_t, t, x_jscc, *, train=False, rngs=None, dtype=None) -> jax.Array:
        """The U-Net output (a `prediction`): (B, H, W, 3) x (B,) int32 x (B, H, W, 3) -> (B, H, W, 3)."""
        unet = self.unet if dtype is None else self.unet.clone(dtype=dtype)
        return unet.apply({"params": params["unet"]}, x_t, t, x_jscc, train=train, rngs=rngs)

    def eps(self, params: Params, x_t, t, x_jscc, *, dtype=None) -> jax.Array:
        """eps_theta(X_t, t | X_jscc), whatever the U-Net was trained to output."""
        pred = self.predict(params, x_t, t, x_jscc, dtype=dtype)
        return diffusion.eps_from_prediction(self.schedule, x_t, t, pred, self.prediction)

    def denoiser_fn(self, params: Params, y: jax.Array, dtype=None):
        """eps_fn(x_t, t) closed over params and X_jscc (decoded once here, outside the chain)."""
        x_jscc = self.condition(params, y)
        return lambda x_t, t: self.eps(params, x_t, t, x_jscc, dtype=dtype)

    def receive(self, params: Params, y: jax.Array, key: jax.Array, sampler: Mapping | None = None):
        """Receiver: Y (B, H/4, W/4, c) -> X_hat (B, H, W, 3) in [-1, 1] by the scanned reverse chain.

        `sampler`: a `diffusion.SamplerSpec` or config mapping, as CASC's; its clip_x0, when not None,
        overrides the model's per-step clipping.
        """
        spec = diffusion.SamplerSpec.of(sampler)
        if spec.clip_x0 is None:
            spec = dataclasses.replace(spec, clip_x0=self.clip_x0)
        shape = (y.shape[0],) + self.image_shape
        x0 = diffusion.sample(self.denoiser_fn(params, y, spec.compute_dtype), self.schedule, shape, key, spec)
        return jnp.clip(x0, -1.0, 1.0)

    def __call__(self, params: Params, x, key, snr_db, sampler: Mapping | None = None):
        """End to end: X -> Z -> Y -> X_jscc -> X_hat."""
        k_ch, k_rx = jax.random.split(key)
        return self.receive(params, self.channel(k_ch, self.transmit(params, x), snr_db), k_rx, sampler)

    # -- objective ------------------------------------------------------------------------------
    def denoiser_loss(self, params: Params, x: jax.Array, key: jax.Array, snr_db: jax.Array | float):
        """L_simple = E ||eps - eps_theta(sqrt(abar_t) X + sqrt(1 - abar_t) eps, t | X_jscc)||^2 (scalar), or
        the same squared error against x0 or v for another `prediction`.

        X_jscc comes from the frozen DeepJSCC through the channel at `snr_db` (scalar or (B,));
        gradients reach only params['unet'].
        """
        k_ch, k_t, k_eps, k_drop = jax.random.split(key, 4)
        frozen = dict(params, deepjscc=jax.lax.stop_gradient(params["deepjscc"]))
        y = self.channel(k_ch, self.transmit(frozen, x), snr_db)
        x_jscc = self.condition(frozen, y)
        t = jax.random.randint(k_t, (x.shape[0],), 0, self.schedule.num_timesteps)
        noise = jax.random.normal(k_eps, x.shape)
        x_t = diffusion.q_sample(self.schedule, x, t, noise)
        pred = self.predict(frozen, x_t, t, x_jscc, train=True, rngs={"dropout": k_drop})
        target = diffusion.prediction_target(self.schedule, x, noise, t, self.prediction)
        return jnp.mean(diffusion.epsilon_loss(pred, target))


def build_diffsc(config: ml_collections.ConfigDict) -> DiffSC:
    """DiffSC from a config with the DeepJSCC fields plus diffsc.unet, diffsc.clip_x0 and diffusion."""
    jscc = build_deepjscc(config)
    unet = module_from_config(UNet, config.diffsc.unet, out_channels=3)
    downsampling = 2 ** (len(unet.ch_mult) - 1)
    if config.data.image_size % downsampling:
        raise ValueError(
            f"diffsc.unet.ch_mult {unet.ch_mult} downsamples by {downsampling}, which does not divide "
            f"data.image_size {config.data.image_size}"
        )
    d = config.diffusion
    schedule = diffusion.make_schedule(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)
    return DiffSC(
        deepjscc=jscc,
        unet=unet,
        schedule=schedule,
        clip_x0=config.diffsc.get("clip_x0", 1.0),
        prediction=diffusion.check_prediction(d.get("prediction", "eps")),
    )
