"""CASC at CR 1/48 with a v-prediction denoiser (`diffusion.prediction='v'`), the parametrisation progressive
distillation needs (Salimans & Ho 2022: an eps network's x0 read, (z - sigma eps) / alpha, blows its error up
by sigma / alpha, 84x at t = T on this schedule, so one- and two-step students of an eps teacher cannot work;
docs/results/cifar10_cpu/findings.md measures it). Same autoencoder, U-Net, CAN and schedule as casc_cr48;
the reproduction trains only its stage 2 on casc_cr48's autoencoder. Presets: '', 'smoke' and 'cpu'."""

from configs.casc_base import base_config


def get_config(arg: str = ""):
    c = base_config(cr="1/48", preset=arg)
    c.name = "casc_cr48_v"
    c.diffusion.prediction = "v"
    return c
