"""The CASC experiment config shared by configs/casc_*.py (paper settings, section IV-A).

Presets (the part after ':' in --config=configs/casc_cr48.py:PRESET):
  ''      the paper: CIFAR-10, LDM VQ-f4 autoencoder, LDM-sized U-Net, T = 1000 DDPM, 500 epochs per stage.
  'smoke' the whole job offline on 2 CPU cores in minutes: embedded data, tiny widths, a few steps.
  'cpu'   real CIFAR-10 training sized for 2 CPU cores (the reproduction in docs/results/cifar10_cpu);
          see `_cpu` for how the sizes were chosen.

Learning rates follow LDM's convention: `base_lr` is per example and the optimiser uses
base_lr * global_batch_size when `scale_lr` is True (LDM's main.py scales by batch size and number
of GPUs). The paper's 4.5e-6 (stage 1) and 1e-6 (stage 2) are such base rates.
"""

from __future__ import annotations

import ml_collections

from configs import common

CAN_LAYERS = ("conv_in", "mid_attn/proj_out", "conv_out")


def base_config(cr: str = "1/48", use_can: bool = True, preset: str = "") -> ml_collections.ConfigDict:
    c = common.experiment("casc", f"casc_cr{cr.split('/')[-1]}" + ("" if use_can else "_nocan"), cr=cr)
    c.data = common.data(image_size=32)
    c.channel = common.channel()
    # LDM VQ-f4 first stage.
    c.autoencoder = ml_collections.ConfigDict(
        dict(
            ch=128,
            ch_mult=(1, 2, 4),
            num_res_blocks=2,
            attn_resolutions=(),
            z_channels=3,
            embed_dim=3,
            num_codes=8192,
            beta=0.25,
            dropout=0.0,
            l2_codes=False,  # True: compare z and codes as unit vectors (see VectorQuantizer)
        )
    )
    # The receiver's VQ decoder runs over a batch in chunks of decode_batch images (a lax.map; 0 = all at
    # once): the same images, but each chunk's activations stay in cache. Paper-size decoder at batch 256 on
    # 2 CPU cores (2026-12-07, training paused): 72.27 ms/image whole, 58.28 / 58.27 / 58.17 in chunks of
    # 8 / 16 / 32. Unset: 16 on CPU, 0 on GPU / TPU (a chunked loop would serialise an accelerator's batch
    # and split a sharded one); system.CPU_DECODE_BATCH.
    c.receiver = ml_collections.ConfigDict(dict(decode_batch=common.unset(int)))
    # LDM-sized denoiser on the 8x8 latent: attention at 4x4 and 2x2 (downsampling factors 2, 4).
    c.unet = ml_collections.ConfigDict(
        dict(
            ch=128,
            ch_mult=(1, 2, 2),
            num_res_blocks=2,
            attn_resolutions=(2, 4),
            head_dim=32,
            dropout=0.1,
            dynamic_impl="patches",
        )
    )
    # Condition-aware layers: the input conv (reads z_t and C_hat), the bottleneck attention's
    # output projection (global context at 2x2), and the output conv. Together about 9.6M generator
    # weights at d = 128; a 3x3 256->256 conv alone would need 75M, hence no middle convs by default.
    c.can = ml_collections.ConfigDict(dict(layers=CAN_LAYERS if use_can else (), share=True))
    c.diffusion = ml_collections.ConfigDict(
        dict(
            schedule="ldm_linear",
            num_timesteps=1000,
            beta_start=0.0015,
            beta_end=0.0195,
            # The U-Net's output: 'eps' (eq. 10, the paper), 'x0' or 'v' (casc_jax.diffusion.prediction); the
            # samplers read any of them as a noise prediction.
            prediction="eps",
        )
    )
    c.sampler = common.sampler("ddpm")

    c.train = common.train(batch_size=128)
    c.train.evaluate = True  # False: --mode=train ends after training (no evaluation sweep)
    c.train.stage1 = common.stage(
        4.5e-6,
        500,
        scale_lr=True,
        betas=(0.5, 0.9),
        lpips_weight=1.0,
        lpips_net="vgg",  # LDM trains with the VGG LPIPS; evaluation reports AlexNet as the paper
        codebook_weight=1.0,
        disc_start=0,  # PatchGAN hinge discriminator from this step; < 0 disables it
        disc_weight=0.75,
        disc_layers=2,
        workdir=common.unset(str),  # another CASC workdir whose trained autoencoder this job uses (no stage 1)
    )
    # AdamW as LDM's LatentDiffusion.configure_optimizers (torch's default weight decay 0.01).
    c.train.stage2 = common.stage(1e-6, 500, scale_lr=True, weight_decay=0.01, ema_decay=0.9999)
    # Progressive distillation after stage 2 (Salimans & Ho 2022; casc_jax.diffusion.distill), off while
    # rounds = 0. Round r trains a student (the CAN and U-Net, a copy of its teacher; f stays stage 2's) so that
    # one deterministic DDIM step matches two of its teacher's: round 1's teacher is stage 2's EMA denoiser on
    # `teacher_steps` grid steps (None: all T), each later round's the previous round's EMA student, and a round
    # halves the steps (T = 1000, rounds = 3: students of 500, 250 and 125 steps). Each round runs `num_steps`
    # (or `epochs`) optimiser steps of Adam at base_lr (per example with scale_lr, as stage 2), checkpoints into
    # WORKDIR/distill<r> and resumes there. weighting: 'truncated_snr' (max(SNR, 1), the paper's), 'snr' (the
    # eps MSE) or 'x0'. Sample a round's student with --config.sampler.name=distilled --config.sampler.steps=N.
    c.train.distill = common.stage(
        1e-6, 50, scale_lr=True, ema_decay=0.9999, rounds=0, teacher_steps=common.unset(int), weighting="truncated_snr"
    )
    c.eval = common.evaluation(batch_size=256, lpips_net="alex", fid_weights=common.unset(str), grid_images=8)
    # Speed / quality benchmark: chains longer than max_timed_steps are timed on that many steps and
    # scaled (None times every chain in full); quality compares samplers on quality_images test images.
    c.benchmark = ml_collections.ConfigDict(
        dict(
            batch_size=256,
            repeats=3,
            max_timed_steps=50,
            ddim_steps=(50, 20),
            dpm_steps=(20, 10),
            ddim_eta1_steps=(50,),  # stochastic DDIM (eta = 1): --mode=quality only
            spacing="logsnr",
            quality_images=256,
            diffsc_config=common.unset(str),  # e.g. configs/diffsc_cr48.py: time DiffSC's receiver beside CASC's
            quality_snr=20.0,
            # With distilled students in the workdir, --mode=quality also compares them with DDPM and the
            # equal-quality setting at these SNRs (dB).
            quality_extra_snrs=(),
            # --mode=benchmark: the distilled receiver ('distilled' sampler, random weights suffice: a student is
            # its teacher's architecture) at these step counts, at batch_size and at each of small_batches.
            distilled_steps=(1, 2),
            small_batches=(8,),
            # The setting --mode=quality named as the fastest within tolerance of the 1000-step DDPM on the
            # CIFAR-10-trained CASC (docs/results/cifar10_cpu): timed as its own row against the paper's 145.82.
            equal_quality_sampler=dict(EQUAL_QUALITY_SAMPLER),
        )
    )

    return common.apply_preset(c, preset, {"smoke": _smoke, "cpu": _cpu})


# The fastest setting --mode=quality found within tolerance of the 1000-step DDPM on the CIFAR-10 CASC
# (stochastic DDIM, 10 uniform steps): the benchmark's equal-quality row and the cpu presets' evaluation
# sampler (CASC and DiffSC alike, in float32).
EQUAL_QUALITY_SAMPLER = dict(name="ddim", steps=10, eta=1.0, spacing="uniform")
CPU_EVAL_SAMPLER = dict(EQUAL_QUALITY_SAMPLER, dtype="float32")
CPU_EVAL_IMAGES = 2000  # a fixed subset of the 10,000 test images (the npz source's seeded order)
# Progressive distillation on the cpu preset: an 8-step teacher, so 3 rounds give students of 4, 2 and 1 steps.
# The preset keeps train.distill.rounds = 0 so that CR 1/96 and the no-CAN ablation (same preset) train none;
# the reproduction's job distill_casc_cr48 passes --config.train.distill.rounds=CPU_DISTILL_ROUNDS.
CPU_DISTILL_TEACHER_STEPS = 8
CPU_DISTILL_ROUNDS = 3


def _cpu(c: ml_collections.ConfigDict) -> None:
    """CIFAR-10 on 2 CPU cores: every stage sized by measured step time (2026-12-02, this machine,
    with other jobs running: the numbers are upper bounds for a quiet machine).

    Tried: autoencoder ch 64 (10.7M params): 4.3 s per batch-32 step (7.5 images/s), too slow for even one
    epoch; ch 32 (2.7M): 1.3 s (25 images/s) once LPIPS-VGG ran its 2x2 convs as tap matmuls (3.4 s before).
    U-Net ch 64, mult (1, 2, 2), 1 res block (4.6M + CAN 2.7M): 0.42 s per batch-64 step (150 images/s).
    Stage 1 levers (2026-12-06, ch 32, batch 32, PSNR of the quantised reconstructions of 256 test images
    after 100 / 200 / 300 steps, /root/exp/ae_exp.py): L1 only at LDM's rate 4.5e-6 x 32 = 1.44e-4: 17.06 dB
    at 100, 18.90 at 200 (0.81-0.87 s/step on a quiet machine); lr 5e-4: 18.07 / 19.51 / 20.38; lr 1e-3:
    17.24 / 19.21 / 19.81; lr 5e-4 with 8192 codes: 18.28 / 19.29 / 19.95 (and slower); L1 + LPIPS-VGG
    (weight 1, LDM's) at lr 5e-4: 15.53 / 17.29 / 18.55 dB, 1.8 dB under L1 alone at 300, and each step
    35% dearer.
    The PatchGAN's forward and backward run from step 0 even before `disc_start`. The earlier recipe
    (LDM's rate, L1 + LPIPS, GAN from step 400, 800 steps: half an epoch) ended at 18.3 dB.
    Chosen: stage 1 L1 only, no GAN, lr 5e-4 flat, 3000 steps x 32 (1.9 epochs, about 43 min quiet; shared by
    casc_cr48, casc_cr96 and the no-CAN ablation through train.stage1.workdir): on 2 cores every epoch spent
    on PSNR buys more than the perceptual terms, and the tables' LPIPS comes from the generative stage 2.
    Measured (reproduction of 2026-12-06): the autoencoder alone 22.89 dB / LPIPS 0.1300 on the 2000
    evaluation images after these 3000 steps, short of the 26 dB aimed at; CASC at 20 dB 20.86 dB, within
    2.03 dB of it.
    Stage 2: 4000 steps x 64 (about 28 min, 5.1 epochs), 1e-4 flat (LDM's 1e-6 x 64 = 6.4e-5 is made for
    500 epochs), EMA 0.999.
    Sized so one job trains and evaluates within one working session (about 1.5 h): workdirs have not always
    survived between sessions on this machine, and a longer job then never finished. With more time, raise
    stage1.num_steps first (PSNR was still rising at 300 steps by about 0.9 dB per 100).
    Evaluation: the equal-quality sampler (`benchmark.equal_quality_sampler`, stochastic DDIM with 10 uniform
    steps: the fastest setting that --mode=quality found within tolerance of the 1000-step DDPM on the earlier
    CIFAR-10 CASC, where DPM-Solver++(2M) 20 steps was 1.3 dB under it), on 2000 test images per SNR (the
    paper's 1000-step DDPM would take hours here; `--mode=quality` measures the gap again on 256 images).
    Distillation (`--config.train.distill.rounds=3`, CPU_DISTILL_ROUNDS; the reproduction's distill_casc_cr48): the
    first teacher is stage 2's EMA denoiser on an 8-step DDIM grid (`round_steps` needs an even teacher after
    round 1, so the 1000-step chain cannot halve down to 1; DDIM-10 halves to 5, then odd), students of 4, 2 and
    1 steps. Step time (2026-12-06, `python -m casc_jax.tools.bench_distill_step`, the same script then in /tmp: the
    real cpu U-Net + CAN distill step, the teacher's 2 DDIM evaluations and the student's forward and backward,
    batch 64, random weights, 36 steps after compilation, under load: load average 4.1 on the 2 cores, another
    session's training job running, ours at nice 19): median 1.40 s, mean 2.29 s, p10 0.92 s, p90 1.83 s;
    compile and first step 36 s. Chosen: 400 steps x 64 per round (0.5 epoch), 3 rounds = 1200 steps, about
    28 min at the loaded median; on a quiet machine the reproduction's rounds ran at 1.6-1.8 steps/s
    (about 0.59 s/step, 4 min per round). Adam 1e-4 flat, as stage 2; EMA
    0.99 (a 100-step horizon: 0.999 would leave the 400-step student mostly its teacher's copy).
    """
    c.data.source = "tfds:cifar10"  # the reproduction passes the npz copy: --config.data.source=npz:...
    c.autoencoder.update(ch=32, ch_mult=(1, 2, 4), num_res_blocks=1, num_codes=1024, l2_codes=True)
    c.unet.update(ch=64, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(2, 4), head_dim=32, dropout=0.1)
    c.sampler.update(CPU_EVAL_SAMPLER)
    c.train.batch_size = 64
    c.train.log_every = 50
    c.train.checkpoint_every = 250
    c.train.stage1.update(
        batch_size=32, base_lr=5e-4, scale_lr=False, num_steps=3000, lpips_weight=0.0, disc_start=-1
    )
    c.train.stage2.update(base_lr=1e-4, scale_lr=False, num_steps=4000, ema_decay=0.999)
    c.train.distill.update(
        base_lr=1e-4, scale_lr=False, num_steps=400, batch_size=64, ema_decay=0.99,
        teacher_steps=CPU_DISTILL_TEACHER_STEPS, weighting="truncated_snr",
    )  # rounds stays 0: see CPU_DISTILL_ROUNDS
    c.eval.update(batch_size=200, num_images=CPU_EVAL_IMAGES)
    # --mode=quality: every sampler at 5-50 steps (stochastic DDIM 3-100) against the 1000-step DDPM on 256
    # test images, timed once. Stochastic DDIM below 10 steps on the trained CASC (2026-12-07, the quality
    # job's images and channel draw, DDPM 20.53 dB / 0.1397 at 20 dB, 16.99 / 0.1636 at 5 dB): 5 uniform
    # steps 20.53 / 0.1439 and 17.09 / 0.1638, within tolerance at both; 3 steps 15.41 / 0.1695; 1 and 2
    # steps 11.3 dB (the eps network's x0 read at t = T, divided by alpha_T = 0.012, is noise).
    c.benchmark.update(
        quality_images=256, ddim_steps=(5, 10, 20, 50), dpm_steps=(5, 10, 20, 50),
        ddim_eta1_steps=(3, 5, 10, 20, 50, 100),
        repeats=1, quality_extra_snrs=(5.0,),
    )
    # --mode=benchmark: the trained receivers at batch 256, CASC beside the CPU DiffSC (the paper's Table I).
    c.benchmark.update(diffsc_config="configs/diffsc_cr48.py:cpu", max_timed_steps=20)


def _smoke(c: ml_collections.ConfigDict) -> None:
    c.data.source = "embedded"
    c.autoencoder.update(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, num_codes=256)
    c.unet.update(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(2,), head_dim=32, dropout=0.0)
    c.diffusion.num_timesteps = 100
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.checkpoint_every = 10
    c.train.stage1.update(base_lr=1e-4, scale_lr=False, num_steps=20, disc_start=10, lpips_net="alex")
    c.train.stage2.update(base_lr=1e-4, scale_lr=False, num_steps=20, ema_decay=0.9)
    c.train.distill.update(base_lr=1e-4, scale_lr=False, num_steps=10, ema_decay=0.9)  # rounds stays 0
    c.eval.update(batch_size=16, num_images=16, grid_images=8)
    c.benchmark.update(
        batch_size=16, repeats=2, max_timed_steps=None, ddim_steps=(10,), dpm_steps=(5,), ddim_eta1_steps=(10,),
        quality_images=16
    )
