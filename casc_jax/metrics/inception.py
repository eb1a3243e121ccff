"""The FID InceptionV3 in Flax and its weights: the network whose 2048-d pool3 activations FID compares
(`casc_jax.metrics.fid`). It is the TF 2015-12-05 Inception graph as ported by pytorch-fid: torchvision's
Inception3 with the patched FIDInceptionA/C/E_1/E_2 blocks, whose average pools exclude the padding and
whose last block max-pools its pool branch.

Weights file (not shipped; FID is reported as unavailable when it is missing)
-----------------------------------------------------------------------------
A `.npz` of the flattened Flax variables of `InceptionV3FID`, keys "params/<module path>/<leaf>"
and "batch_stats/<module path>/<leaf>", e.g. "params/Mixed_5b/branch1x1/conv/kernel" (kh, kw, Cin,
Cout) and "batch_stats/Mixed_5b/branch1x1/bn/mean". Looked up at `path`, else at
$CASC_JAX_INCEPTION_WEIGHTS, else at ~/.cache/casc_jax/pt_inception-2015-12-05.npz. To make it from
pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (torch is not a dependency of casc-jax):

    # where torch is installed; the .pth is pytorch_fid.inception.FID_WEIGHTS_URL
    sd = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu")
    np.savez("pt_inception_state_dict.npz", **{k: v.numpy() for k, v in sd.items()})
    # then, here:
    from casc_jax.metrics import convert_pytorch_fid_npz
    convert_pytorch_fid_npz("pt_inception_state_dict.npz", "~/.cache/casc_jax/pt_inception-2015-12-05.npz")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ENV_VAR = "CASC_JAX_INCEPTION_WEIGHTS"
DEFAULT_FILENAME = "pt_inception-2015-12-05.npz"
FID_INPUT_SIZE = 299
FID_FEATURES = 2048

# ---------------------------------------------------------------------------------------------
# InceptionV3 (pytorch-fid variant), NHWC


def _pad(p: int | tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    ph, pw = (p, p) if isinstance(p, int) else p
    return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
    """Conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU, as in torchvision."""

    features: int
    kernel: tuple[int, int] = (1, 1)
    strides: int = 1
    padding: int | tuple[int, int] = 0

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        s, pad = (self.strides, self.strides), _pad(self.padding)
        x = nn.Conv(self.features, self.kernel, strides=s, padding=pad, use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x: jnp.ndarray) -> jnp.ndarray:
    """3x3 stride-1 average pool, padding 1, padded zeros not counted (TF / FIDInception patch)."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_down(x: jnp.ndarray) -> jnp.ndarray:
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
    """FIDInceptionA: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 -> 64 + 64 + 96 + pool_features."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b1 = BasicConv2d(64, name="branch1x1")(x)
        b5 = BasicConv2d(48, name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (torchvision InceptionB): 384 + 96 + C_in channels."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b3 = BasicConv2d(384, (3, 3), strides=2, name="branch3x3")(x)
        bd = BasicConv2d(64, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_down(x)], axis=-1)


class InceptionC(nn.Module):
    """FIDInceptionC with factorised 7x7 convolutions: 4 x 192 = 768 channels."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, name="branch1x1")(x)
        b7 = BasicConv2d(c7, name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (torchvision InceptionD): 320 + 192 + C_in channels."""

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b3 = BasicConv2d(192, name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_down(x)], axis=-1)


class InceptionE(nn.Module):
    """FIDInceptionE_1 (pool="avg") / FIDInceptionE_2 (pool="max"): 320 + 768 + 768 + 192 = 2048."""

    pool: str = "avg"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        b1 = BasicConv2d(320, name="branch1x1")(x)
        b3 = BasicConv2d(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv2d(448, name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        if self.pool == "max":  # the FID graph's quirk in Mixed_7c
            pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
        else:
            pooled = _avg_pool_same(x)
        bp = BasicConv2d(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(x: jnp.ndarray, size: int) -> jnp.ndarray:
    """`(B, H, W, C)` -> `(B, size, size, C)`, bilinear with half-pixel centres and no antialiasing,
    i.e. torch `F.interpolate(mode="bilinear", align_corners=False)` as used by pytorch-fid."""
    b, _, _, c = x.shape
    return jax.image.resize(x, (b, size, size, c), method="bilinear", antialias=False)


class InceptionV3FID(nn.Module):
    """pytorch-fid InceptionV3 up to the final average pool (pool3).

    Attributes:
      resize_input: resize the input to `input_size` x `input_size` first (pytorch-fid default). With
        False, any input of at least 75 x 75 works (e.g. for cheap shape tests).
      input_size: 299 for FID.

    Call with images `(B, H, W, 3)` in [-1, 1] (the range the network expects); returns `(B, 2048)`.
    Submodule names follow torchvision's (Conv2d_1a_3x3, Mixed_5b, ..., Mixed_7c).
    """

    resize_input: bool = True
    input_size: int = FID_INPUT_SIZE

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected images (B, H, W, 3), got shape {x.shape}")
        x = x.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x, self.input_size)
        if min(x.shape[1:3]) < 75:
            raise ValueError(f"InceptionV3 needs inputs of at least 75x75, got {x.shape[1:3]}")
        # block 0
        x = BasicConv2d(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=1, name="Conv2d_2b_3x3")(x)
        x = _max_pool_down(x)
        # block 1
        x = BasicConv2d(80, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_down(x)
        # block 2
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)
        # block 3
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE("avg", name="Mixed_7b")(x)
        x = InceptionE("max", name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# ---------------------------------------------------------------------------------------------
# Weights: conversion, file format, loading


def inception_abstract_variables() -> dict:
    """Shapes/dtypes of `InceptionV3FID` variables ({"params", "batch_stats"}) without computing."""
    model = InceptionV3FID(resize_input=False)
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 75, 75, 3), jnp.float32))


def random_inception_variables(seed: int = 0) -> dict:
    """Random `InceptionV3FID` variables built in numpy (He-normal kernels, identity BatchNorm).

    Much cheaper than compiling `InceptionV3FID.init` on CPU; for shape tests and smoke runs only.
    """
    rng = np.random.default_rng(seed)

    def leaf(path: str, a: jax.ShapeDtypeStruct) -> np.ndarray:
        if path.endswith("kernel"):
            fan_in = int(np.prod(a.shape[:-1]))
            return (rng.standard_normal(a.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        fill = 1.0 if path.endswith(("scale", "var")) else 0.0
        return np.full(a.shape, fill, np.float32)

    flat = {k: leaf(k, a) for k, a in _flatten(inception_abstract_variables()).items()}
    return jax.tree.map(jnp.asarray, _unflatten(flat))


_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}  # fmt: skip


def map_pytorch_fid_entry(key: str, value: np.ndarray) -> tuple[str, list[str], np.ndarray] | None:
    """One torch state_dict entry -> (collection, Flax path, value), or None for unused entries.

    "<path>.conv.weight" (Cout, Cin, kh, kw) -> params/<path>/conv/kernel (kh, kw, Cin, Cout);
    "<path>.bn.{weight,bias}" -> params/<path>/bn/{scale,bias};
    "<path>.bn.{running_mean,running_var}" -> batch_stats/<path>/bn/{mean,var}.
    The classifier ("fc.*"), "AuxLogits.*" and "num_batches_tracked" are not used.

    Raises:
      KeyError: a key that is none of the above.
    """
    parts = key.split(".")
    if parts[0] in ("fc", "AuxLogits") or parts[-1] == "num_batches_tracked":
        return None
    value = np.asarray(value, np.float32)
    if len(parts) >= 2 and parts[-2] == "conv" and parts[-1] == "weight":
        return "params", [*parts[:-1], "kernel"], np.transpose(value, (2, 3, 1, 0))
    if len(parts) >= 2 and parts[-2] == "bn" and parts[-1] in _BN_LEAVES:
        collection, leaf = _BN_LEAVES[parts[-1]]
        return collection, [*parts[:-1], leaf], value
    raise KeyError(key)


def convert_pytorch_fid_state_dict(state_dict: Mapping[str, np.ndarray]) -> dict:
    """pytorch-fid Inception state_dict (torchvision names, numpy values) -> `InceptionV3FID` variables.

    Keys are torchvision's ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch1x1.bn.running_mean", ...),
    mapped by `map_pytorch_fid_entry`. pytorch-fid's wrapper-style "blocks.i.j." keys are not supported.

    Raises:
      ValueError: unknown keys, missing keys or shapes that do not fit the architecture.
    """
    variables: dict = {"params": {}, "batch_stats": {}}
    unknown = []
    for key, value in state_dict.items():
        try:
            mapped = map_pytorch_fid_entry(key, value)
        except KeyError:
            unknown.append(key)
            continue
        if mapped is None:
            continue
        collection, path, value = mapped
        node = variables[collection]
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = value
    if unknown:
        raise ValueError(f"unexpected keys in the Inception state_dict (first 5): {unknown[:5]}")
    _check_variables(variables, "converted state_dict")
    return variables


def _flatten(tree: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _unflatten(flat: Mapping[str, Any]) -> dict:
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *path, leaf = key.split("/")
        for p in path:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def _check_variables(variables: Mapping, source: str) -> None:
    want = {k: tuple(v.shape) for k, v in _flatten(inception_abstract_variables()).items()}
    got = {k: tuple(np.shape(v)) for k, v in _flatten(variables).items()}
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    bad = sorted(k for k in set(want) & set(got) if want[k] != got[k])
    if missing or extra or bad:
        raise ValueError(
            f"{source} does not fit InceptionV3FID: missing {missing[:5]} ({len(missing)}), "
            f"unexpected {extra[:5]} ({len(extra)}), wrong shape "
            f"{[(k, got[k], want[k]) for k in bad[:5]]} ({len(bad)})"
        )


def save_inception_weights(variables: Mapping, path: str) -> None:
    """Write `InceptionV3FID` variables to the documented `.npz` format."""
    path = os.path.expanduser(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in _flatten(variables).items()})


def convert_pytorch_fid_npz(state_dict_npz: str, out_path: str) -> None:
    """Convert an `.npz` of pytorch-fid's state_dict (see module docstring) to our weights file."""
    with np.load(os.path.expanduser(state_dict_npz)) as f:
        sd = {k: f[k] for k in f.files}
    save_inception_weights(convert_pytorch_fid_state_dict(sd), out_path)


def inception_weights_path(path: str | None = None) -> str:
    """The weights file: `path`, else $CASC_JAX_INCEPTION_WEIGHTS, else ~/.cache/casc_jax/<default>."""
    path = path or os.environ.get(ENV_VAR) or os.path.join("~", ".cache", "casc_jax", DEFAULT_FILENAME)
    return os.path.expanduser(path)


def load_inception_variables(path: str | None = None) -> dict:
    """Load `InceptionV3FID` variables from the `.npz` weights file.

    Raises:
      FileNotFoundError: the file is missing (the message says how to make it); callers such as the
        evaluation catch it and report FID as unavailable.
    """
    path = inception_weights_path(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"FID Inception weights not found at {path!r} (set {ENV_VAR} or pass path=). Expected "
            f"{DEFAULT_FILENAME}: the flattened InceptionV3FID variables as .npz, converted from "
            "pytorch-fid's pt_inception-2015-12-05-6726825d.pth. Where torch is installed save its "
            "state_dict with np.savez(..., **{k: v.numpy()}), then call "
            f"casc_jax.metrics.convert_pytorch_fid_npz('STATE_DICT.npz', {path!r}) "
            "(details in the casc_jax/metrics/inception.py docstring)."
        )
    with np.load(path) as f:
        variables = _unflatten({k: f[k] for k in f.files})
    _check_variables(variables, path)
    return jax.tree.map(jnp.asarray, variables)


def load_inception(
    path: str | None = None, resize_input: bool = True
) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Pretrained FID InceptionV3 as a jitted function: images `(B, H, W, 3)` in [-1, 1] -> `(B, 2048)`.

    Raises FileNotFoundError when the weights file is missing (see `load_inception_variables`).
    """
    variables = load_inception_variables(path)
    apply = jax.jit(InceptionV3FID(resize_input=resize_input).apply)

    def features(images: jnp.ndarray) -> jnp.ndarray:
        return apply(variables, jnp.asarray(images, jnp.float32))

    return features
