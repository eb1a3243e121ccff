"""DiffSC at CR 1/48 with a v-prediction U-Net (`diffusion.prediction='v'`). The eps DiffSC of the cpu preset
does not use its condition at high noise: its one-step x0 read falls to 6 dB at t = 900 although the condition
alone gives 23 dB (docs/results/cifar10_cpu/findings.md). An eps network's x0 read, (x_t - sigma eps) / alpha,
multiplies its error by sigma / alpha (84x at t = T on this schedule); a v network's x0 read,
alpha x_t - sigma v, does not, which is why strongly conditioned restoration tends to train faster on v.
Same U-Net, schedule, budget and DeepJSCC-MSE stage as diffsc_cr48. Presets: '', 'smoke' and 'cpu'."""

from configs.deepjscc_base import diffsc_config


def get_config(arg: str = ""):
    c = diffsc_config(cr="1/48", preset=arg)
    c.name = "diffsc_cr48_v"
    c.diffusion.prediction = "v"
    return c
