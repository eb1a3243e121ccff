"""Condition-aware neural network (CAN, Cai et al. 2024; CASC section III-D, eq. 4).

W = f_CAN(C_hat): parallel Dense layers map the flattened received condition (B, d) to one
dynamic weight vector per group of condition-aware U-Net layers. Layers whose kernels have the
same shape may share one vector (`share=True`). The generators are zero-initialised, so at
initialisation the condition-aware U-Net equals its static version.

The output is a `dynamic` variable tree that mirrors the U-Net's parameter paths, holding each
chosen layer's per-sample kernel in the layout of casc_jax.nn.dynamic. It does not depend on the
timestep, so it is computed once per sample before the reverse chain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax

Shape = tuple[int, ...]


def kernel_shapes(params: Mapping, layers: Sequence[str]) -> dict[str, Shape]:
    """Kernel shape of each condition-aware layer, looked up by its path ('mid_attn/proj_out')."""
    flat = {"/".join(k[:-1]): v.shape for k, v in _flatten(params).items() if k[-1] == "kernel"}
    missing = [name for name in layers if name not in flat]
    if missing:
        candidates = ", ".join(sorted(flat))
        raise ValueError(f"unknown condition-aware layer(s) {missing}; layers with kernels: {candidates}")
    return {name: tuple(flat[name]) for name in layers}


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], jax.Array]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, prefix + (key,)))
        else:
            out[prefix + (key,)] = value
    return out


def group_layers(shapes: Mapping[str, Shape], share: bool) -> dict[str, tuple[Shape, tuple[str, ...]]]:
    """Generator groups: name -> (kernel shape, layers fed). Shared groups are named by shape."""
    groups: dict[str, tuple[Shape, tuple[str, ...]]] = {}
    for layer, shape in shapes.items():
        name = "shape_" + "x".join(map(str, shape)) if share else layer.replace("/", "__")
        _, members = groups.get(name, (shape, ()))
        groups[name] = (shape, members + (layer,))
    return groups


def dynamic_layout(shape: Shape) -> Shape:
    """Per-sample kernel layout without the batch axis: conv HWIO -> (kh*kw*Cin, Cout); dense as is."""
    return (math.prod(shape[:-1]), shape[-1])


class CAN(nn.Module):
    """f_CAN: C_hat (B, ...) -> {group: W (B, K, Cout)} with one zero-initialised Dense per group."""

    groups: Mapping[str, tuple[Shape, tuple[str, ...]]]

    @nn.compact
    def __call__(self, c_hat):
        flat = c_hat.reshape(c_hat.shape[0], -1)
        out = {}
        for name, (shape, _) in self.groups.items():
            w = nn.Dense(
                math.prod(shape),
                kernel_init=nn.initializers.zeros,
                bias_init=nn.initializers.zeros,
                name=name,
            )(flat)
            out[name] = w.reshape((flat.shape[0],) + dynamic_layout(shape))
        return out


def dynamic_variables(generated: Mapping[str, jax.Array], groups: Mapping) -> dict:
    """Place each group's W at the paths of its layers: {'mid_attn': {'proj_out': {'kernel': W}}}."""
    tree: dict = {}
    for name, (_, layers) in groups.items():
        for layer in layers:
            node = tree
            for part in layer.split("/"):
                node = node.setdefault(part, {})
            node["kernel"] = generated[name]
    return tree


def generator_size(groups: Mapping, condition_size: int) -> int:
    """Number of CAN parameters: sum over groups of (d + 1) * |W|."""
    return sum((condition_size + 1) * math.prod(shape) for shape, _ in groups.values())
