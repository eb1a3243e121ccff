"""How well a trained diffusion decoder reads the clean signal in one step, at each noise level t.

    python -m casc_jax.tools.denoiser_profile --config=configs/diffsc_cr48_v.py:cpu --workdir=RUN \
        [--set diffsc.deepjscc_workdir=RUN_JSCC ...] [--snr=20] [--images=64] [--out=DIR]

For evaluation images x through the channel at --snr, the denoiser's x0 read at t,
    x0_hat(t) = (x_t - sigma_t eps_hat(x_t, t | condition)) / alpha_t,   x_t = alpha_t x0 + sigma_t eps,
is what every sampler step builds on. Its PSNR against the source (DiffSC: in pixels; CASC: decoded from
the latent) is printed per t beside the reference the condition alone gives (DiffSC: the DeepJSCC output it
refines; CASC: its autoencoder's reconstruction, the ceiling of its receiver). A decoder that uses its
condition keeps the read near that reference at large t, where the image's content is decided; one that
does not falls towards the dataset mean. One noise draw per image, shared by every t.

Writes OUT/denoiser_profile.json and OUT/denoiser_profile.png (OUT defaults to WORKDIR).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from collections.abc import Callable, Sequence

TIMESTEPS = (0, 10, 50, 100, 200, 300, 500, 700, 900, 999)
RUNNERS = {"casc": "casc_jax.casc.run", "diffsc": "casc_jax.casc.baselines.run"}  # their Systems load the weights


def views(config, params) -> tuple[Callable, Callable, Callable, str, object]:
    """The parts of a CASC or DiffSC `config`'s system that the profile reads: received(x, key, snr) ->
    (clean target x0, condition, reference image), eps(x_t, t, condition), decode(x0_hat) -> image, the
    reference's name, and the diffusion schedule."""
    if config.system == "diffsc":
        from casc_jax.casc.baselines import build_diffsc

        model = build_diffsc(config)

        def received(x, key, snr):
            x_jscc = model.condition(params, model.channel(key, model.transmit(params, x), snr))
            return x, x_jscc, x_jscc

        return (received, lambda x_t, t, x_jscc: model.eps(params, x_t, t, x_jscc), lambda x0: x0,
                "DeepJSCC (MSE) condition", model.schedule)
    if config.system == "casc":
        from casc_jax.casc.system import build_casc

        model = build_casc(config)

        def received(x, key, snr):
            z = model.encode(params, x)
            return z, model.channel(key, model.transmit(params, x), snr), model.decode(params, z)

        return (received, lambda z_t, t, c_hat: model.denoiser_fn(params, c_hat)(z_t, t),
                lambda z: model.decode(params, z), "autoencoder alone", model.schedule)
    raise ValueError(f"config.system {config.system!r} has no diffusion decoder to profile; give a casc or "
                     "diffsc config")


def profile(config, params, images, snr_db: float, timesteps: Sequence[int] = TIMESTEPS, seed: int = 0) -> dict:
    """{'snr_db', 'num_images', 'reference', 'reference_psnr', 'rows': [{'t', 'psnr'}]} on `images`
    (N, H, W, 3) in [-1, 1]: the mean capped PSNR of the decoded x0 read, clipped to [-1, 1], per t."""
    import jax
    import jax.numpy as jnp

    from casc_jax import diffusion
    from casc_jax.evaluate import capped_psnr

    received, eps, decode, reference, schedule = views(config, params)
    k_channel, k_noise = jax.random.split(jax.random.key(seed))
    x = jnp.asarray(images)
    x0, condition, ref = jax.jit(received, static_argnums=2)(x, k_channel, float(snr_db))
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)

    @jax.jit
    def read(t):
        ts = jnp.full((x0.shape[0],), t, jnp.int32)
        x_t = diffusion.q_sample(schedule, x0, ts, noise)
        x0_hat = diffusion.predict_x0(schedule, x_t, ts, eps(x_t, ts, condition))
        return jnp.mean(capped_psnr(x, jnp.clip(decode(x0_hat), -1.0, 1.0)))

    rows = [{"t": int(t), "psnr": float(read(int(t)))} for t in timesteps]
    return {"snr_db": float(snr_db), "num_images": int(x.shape[0]), "reference": reference,
            "reference_psnr": float(jnp.mean(capped_psnr(x, jnp.clip(ref, -1.0, 1.0)))), "rows": rows}


def plot(report: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["t"] for r in report["rows"]], [r["psnr"] for r in report["rows"]], "o-", label="one-step x0 read")
    ax.axhline(report["reference_psnr"], color="grey", linestyle="--", label=report["reference"])
    ax.set(xlabel="t", ylabel="PSNR (dB)", title=f"{title}, {report['snr_db']:g} dB, {report['num_images']} images")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a path or a name


def main(argv=None) -> None:
    import importlib

    from casc_jax import data as data_lib
    from casc_jax.cli import load_config, show_progress

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="a CASC or DiffSC config file[:preset]")
    parser.add_argument("--workdir", required=True, help="the trained run")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a config override")
    parser.add_argument("--snr", type=float, default=20.0, help="channel SNR (dB)")
    parser.add_argument("--images", type=int, default=64, help="evaluation images (the first of the eval split)")
    parser.add_argument("--out", default=None, help="output folder (default: WORKDIR)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    try:
        config.update_from_flattened_dict({k: _value(v) for k, v in (o.split("=", 1) for o in args.set)})
    except (KeyError, TypeError, ValueError) as err:
        parser.error(f"--set: {err}")
    try:
        views(config, None)  # refuses a system without a diffusion decoder before loading anything
    except ValueError as err:
        parser.error(str(err))
    show_progress()
    params, source = importlib.import_module(RUNNERS[config.system]).SYSTEM.load(config, args.workdir)
    stream = data_lib.Stream.single_pass(args.images)
    batch = next(data_lib.make_dataset(config.data, config.data.eval_split, stream))
    report = profile(config, params, batch["image"][batch["valid"]], args.snr)
    report |= {"config": config.name, "prediction": config.diffusion.get("prediction", "eps"), "weights": source}
    out = args.out or args.workdir
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "denoiser_profile.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(report, os.path.join(out, "denoiser_profile.png"), f"{config.name} ({report['prediction']})")
    print(f"{config.name} ({report['prediction']}), {report['snr_db']:g} dB, {report['num_images']} images; "
          f"{report['reference']}: {report['reference_psnr']:.2f} dB")
    for r in report["rows"]:
        print(f"  t = {r['t']:4d}: x0 read {r['psnr']:6.2f} dB")


if __name__ == "__main__":
    main()
