"""Condition-aware layers and the CAN generator."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from casc_jax.casc import can
from casc_jax.nn.dynamic import (
    DYNAMIC,
    DYNAMIC_CONV_IMPLS,
    CondConv,
    CondDense,
    conv_taps,
    dynamic_conv,
    static_conv_form,
)


def _conv(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )


@pytest.mark.parametrize("impl", DYNAMIC_CONV_IMPLS)
@pytest.mark.parametrize("ksize", [(3, 3), (1, 1), (3, 1)])
def test_dynamic_layer_equals_conv_with_summed_kernel(impl, ksize):
    """static(x) + dynamic(x; W_b) == conv(x_b, K + W_b) for every sample b."""
    b, cin, cout = 3, 4, 5
    kx, kw, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (b, 6, 7, cin))
    layer = CondConv(cout, ksize, impl=impl)
    params = layer.init(kp, x)["params"]
    w = jax.random.normal(kw, (b, ksize[0] * ksize[1] * cin, cout))
    with jax.default_matmul_precision("highest"):
        y = layer.apply({"params": params, DYNAMIC: {"kernel": w}}, x)
    for i in range(b):
        summed = params["kernel"] + w[i].reshape(ksize + (cin, cout))
        ref = _conv(x[i : i + 1], summed)[0] + params["bias"]
        np.testing.assert_allclose(np.asarray(y[i]), np.asarray(ref), rtol=1e-4, atol=1e-4)


def test_dynamic_dense_equals_dense_with_summed_kernel():
    b = 3
    x = jax.random.normal(jax.random.key(1), (b, 5, 4))
    layer = CondDense(6)
    params = layer.init(jax.random.key(2), x)["params"]
    w = jax.random.normal(jax.random.key(3), (b, 4, 6))
    y = layer.apply({"params": params, DYNAMIC: {"kernel": w}}, x)
    ref = np.einsum("bnc,bco->bno", np.asarray(x), np.asarray(params["kernel"] + w)) + np.asarray(params["bias"])
    np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


def test_dynamic_conv_rejects_wrong_kernel_layout():
    with pytest.raises(ValueError, match="dynamic kernel shape"):
        dynamic_conv(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 9 * 4, 5)), (3, 3))


def test_dynamic_conv_forms_lower_without_python_loop_over_samples():
    """The jaxpr size does not grow with the batch: one batched op, no per-sample unrolling."""
    sizes = []
    for b in (2, 16):
        jaxpr = jax.make_jaxpr(lambda x, w: dynamic_conv(x, w, (3, 3)))(
            jnp.zeros((b, 4, 4, 3)), jnp.zeros((b, 27, 5))
        )
        sizes.append(len(jaxpr.eqns))
    assert sizes[0] == sizes[1]


class _Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = CondConv(4, (3, 3), name="a")(x)
        x = CondConv(4, (3, 3), name="b")(nn.relu(x))
        return CondDense(2, name="head")(x)


def _toy_groups(share):
    x = jnp.zeros((1, 5, 5, 4))
    params = _Toy().init(jax.random.key(0), x)["params"]
    shapes = can.kernel_shapes(params, ("a", "b", "head"))
    return params, can.group_layers(shapes, share)


def test_groups_share_identical_shapes():
    _, shared = _toy_groups(share=True)
    assert sorted(len(layers) for _, layers in shared.values()) == [1, 2]
    _, separate = _toy_groups(share=False)
    assert len(separate) == 3
    assert can.generator_size(separate, 10) == 11 * (2 * 3 * 3 * 4 * 4 + 4 * 2)


def test_unknown_layer_lists_candidates():
    params, _ = _toy_groups(True)
    with pytest.raises(ValueError, match="layers with kernels: a, b, head"):
        can.kernel_shapes(params, ("missing",))


def test_can_zero_init_equals_static_and_differs_per_condition_after_training():
    params, groups = _toy_groups(share=True)
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 4))
    c_hat = jax.random.normal(jax.random.key(2), (2, 16))
    generator = can.CAN(groups)
    gen_params = generator.init(jax.random.key(3), c_hat)["params"]

    dynamic = can.dynamic_variables(generator.apply({"params": gen_params}, c_hat), groups)
    static_out = _Toy().apply({"params": params}, x)
    aware_out = _Toy().apply({"params": params, DYNAMIC: dynamic}, x)
    np.testing.assert_allclose(np.asarray(aware_out), np.asarray(static_out), atol=1e-6)

    # Once the generator is non-zero, different conditions give different kernels and outputs.
    gen_params = jax.tree.map(lambda p: jax.random.normal(jax.random.key(4), p.shape) * 0.01, gen_params)
    generated = generator.apply({"params": gen_params}, c_hat)
    for w in generated.values():
        assert not np.allclose(np.asarray(w[0]), np.asarray(w[1]))
    dynamic = can.dynamic_variables(generated, groups)
    assert dynamic["a"]["kernel"] is dynamic["b"]["kernel"]  # shared vector
    aware_out = _Toy().apply({"params": params, DYNAMIC: dynamic}, x)
    assert not np.allclose(np.asarray(aware_out), np.asarray(static_out), atol=1e-4)


@pytest.mark.parametrize(
    ("hw", "stride", "padding"), [(2, 1, "SAME"), (5, 2, "VALID"), (4, 2, "SAME"), (7, 1, "VALID")]
)
def test_conv_taps_equals_xla_conv(hw, stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, hw, hw + 1, 3))
    k = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    ref = jax.lax.conv_general_dilated(
        x, k, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
    )
    with jax.default_matmul_precision("highest"):
        got = conv_taps(x, k, stride, padding)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_small_map_conv_form_is_chosen_per_backend():
    assert static_conv_form(4, backend="cpu") == "taps" and static_conv_form(9, backend="cpu") == "xla"
    assert static_conv_form(4, backend="gpu") == "xla" and static_conv_form(4, backend="tpu") == "xla"
    assert static_conv_form(64, impl="taps", backend="gpu") == "taps"
    with pytest.raises(ValueError, match="unknown conv impl"):
        static_conv_form(4, impl="winograd")
