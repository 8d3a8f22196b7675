"""The convolutional cubic field (eq 75): conv implementations agree, Euler = eq 109 with channels,
the paper's parameter count (§5.2) and a finite-difference gradient."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import net_from_config
from ode_nets.build import with_model
from ode_nets.config import from_dict
from ode_nets.errors import ConfigError
from ode_nets.fields.cubic import CONV_IMPLS, NHWC_CONV_IMPLS, ChannelsLastConvCubicField, ConvCubicField, conv3x3_xla
from ode_nets.fields.time_params import ParamInit
from ode_nets.losses import cross_entropy, smoothness
from ode_nets.models import count_parameters

pytestmark = pytest.mark.usefixtures("x64")  # every test in float64 (conftest's fixture)
FLOAT64_IMPLS = {k: v for k, v in CONV_IMPLS.items() if k not in ("onednn", "direct")}  # float32 only (test_custom_conv.py)


def paper_config(**model):
    """The §5.2 MNIST model: 1 + 9 channels, L = 20, max-pool readout, learnable gamma~."""
    return from_dict({"model": {"field": "conv_cubic", "layers": 20, "augment": 9, "readout": "max_pool_softmax",
                                "learn_gamma": True, **model}})


def reference_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Cross-correlation with zero padding written out with NumPy loops (eq 72)."""
    height, width = x.shape[-2:]
    padded = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)])
    out = np.zeros((*x.shape[:-3], kernel.shape[0], height, width))
    for i in range(3):
        for j in range(3):
            out += np.einsum("...chw,oc->...ohw", padded[..., i:i + height, j:j + width], kernel[:, :, i, j])
    return out


@pytest.mark.parametrize("impl", sorted(FLOAT64_IMPLS))
def test_conv_impls_match_reference(impl):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6))
    kernel = rng.standard_normal((4, 3, 3, 3))
    got = np.asarray(CONV_IMPLS[impl](jnp.asarray(x), jnp.asarray(kernel)))
    np.testing.assert_allclose(got, reference_conv(x, kernel), rtol=1e-12, atol=1e-12)
    # a kernel with a single 1 at offset (i, j) shifts the image: checks orientation, not just linearity
    shift = np.zeros((3, 3, 3, 3))
    shift[np.arange(3), np.arange(3), 0, 2] = 1.0  # out[h, w] = x[h - 1, w + 1]
    out = np.asarray(CONV_IMPLS[impl](jnp.asarray(x), jnp.asarray(shift)))
    np.testing.assert_array_equal(out[..., 1:, :-1], x[..., :-1, 1:])
    np.testing.assert_array_equal(out[..., 0, :], 0.0)


@pytest.mark.parametrize("impl", sorted(FLOAT64_IMPLS))
def test_weight_density_is_eq_77(impl):
    """dL/dkappa~ density sum_j a_{o,j} x_{c,j+p} (eq 77), written out with NumPy loops over the offsets p."""
    rng = np.random.default_rng(7)
    x, a = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 4, 5, 4))
    field = ConvCubicField.init((3, 5, 4), ParamInit(layers=2), jax.random.PRNGKey(0), conv_impl=impl)
    padded = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1)])
    want = np.stack([np.stack([np.einsum("bohw,bchw->oc", a, padded[:, :, i:i + 5, j:j + 4]) for j in range(3)], -1)
                     for i in range(3)], -2)
    got = field.weight_density(jnp.asarray(x), jnp.asarray(a))
    assert got.shape == (4, 3, 3, 3)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("impl", sorted(k for k in NHWC_CONV_IMPLS if k != "onednn"))
def test_channels_last_field_is_the_same_map_transposed(impl):
    """conv_cubic_nhwc (state (..., H, W, C)) = conv_cubic (state (..., C, H, W)) with the axes moved: the field,
    its adjoint terms (eqs 76, 77) and the net's logits and gradients (through the channels_last stem)."""
    rng = np.random.default_rng(3)
    params = ParamInit(layers=2, init="normal", scale=0.3)
    first = ConvCubicField.init((3, 5, 4), params, jax.random.PRNGKey(1), gamma=0.1, conv_impl="xla")
    last = ChannelsLastConvCubicField(first.kernel, first.b, first.gamma, first.dt, conv_impl=impl)
    x, a = rng.normal(size=(2, 3, 5, 4)), rng.normal(size=(2, 3, 5, 4))
    to_last = lambda v: jnp.moveaxis(jnp.asarray(v), -3, -1)  # noqa: E731
    p = first.layer_params(jnp.array(1))
    np.testing.assert_allclose(last(0.7, to_last(x)), to_last(first(0.7, x)), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(last.vjp_state(p, to_last(x), to_last(a)), to_last(first.vjp_state(p, x, a)),
                               rtol=1e-12, atol=1e-12)
    for got, want in zip(last.vjp_params(to_last(x), to_last(a)), first.vjp_params(jnp.asarray(x), jnp.asarray(a))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    images, labels = jnp.asarray(rng.random((3, 1, 6, 6))), jnp.array([0, 2, 1])
    nets = [net_from_config(paper_config(init="normal", init_scale=0.2, conv_impl=c, **layout), (1, 6, 6), 10)
            for c, layout in (("xla", {}), (impl, {"field": "conv_cubic_nhwc", "stem": "channels_last"}))]
    np.testing.assert_allclose(nets[1](images), nets[0](images), rtol=1e-12, atol=1e-12)
    loss = lambda m: cross_entropy(m(images), labels) + 0.1 * smoothness(m.field)  # noqa: E731
    grads = [jax.tree_util.tree_leaves(eqx.filter_grad(loss)(net)) for net in nets]
    for got, want in zip(*grads):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


HAND_VJP_NETS = {  # field: (model section, input shape, classes)
    "cubic": ({"field": "cubic", "augment": 1, "readout": "softmax"}, (2,), 3),
    "conv_cubic": ({"field": "conv_cubic", "augment": 3, "readout": "max_pool_softmax"}, (1, 6, 6), 4),
    "conv_cubic_nhwc": ({"field": "conv_cubic_nhwc", "stem": "channels_last", "augment": 3,
                         "readout": "max_pool_softmax"}, (1, 6, 6), 4),
}


@pytest.mark.parametrize("strategy", ["discretize_then_optimize", "direct_adjoint"])
@pytest.mark.parametrize("field", sorted(HAND_VJP_NETS))
def test_hand_vjp_gives_the_autodiff_gradient(field, strategy):
    """model.hand_vjp: the field's reverse mode is its hand-derived terms (eqs 62/76, 65/66/71/77/78); the net's
    gradient (kernel/weight, bias, gamma~) is the autodiff one."""
    model, input_shape, classes = HAND_VJP_NETS[field]
    rng = np.random.default_rng(4)
    inputs, labels = jnp.asarray(rng.random((3, *input_shape))), jnp.array([0, 2, 1])
    grads = []
    for hand in (False, True):
        cfg = from_dict({"model": {**model, "layers": 4, "init": "normal", "init_scale": 0.3, "gamma": 0.2,
                                   "hand_vjp": hand}, "gradient": {"strategy": strategy}})
        net = net_from_config(cfg, input_shape, classes)
        assert net.field.hand_vjp is hand
        loss = lambda m: cross_entropy(m(inputs), labels) + 0.1 * smoothness(m.field)  # noqa: E731
        grads.append(jax.tree_util.tree_leaves(eqx.filter_grad(loss)(net)))
    assert len(grads[0]) == len(grads[1]) == 3  # weight, bias, gamma~
    for got, want in zip(grads[1], grads[0]):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


def test_hand_vjp_overflows_on_the_same_examples_as_autodiff():
    """At states where the explicit cubic step overflows (the images `train.drop_nonfinite_examples` leaves out),
    the hand-derived VJP finds the same examples non-finite as autodiff and the same gradient on the others
    (`scripts/diagnose.py hand-vjp` runs this check on a trained run's state)."""
    from ode_nets.analysis.diagnostics import gradient_agreement
    from ode_nets.training import finite_examples
    from ode_nets.training.objective import Objective

    model, input_shape, classes = HAND_VJP_NETS["conv_cubic_nhwc"]
    scales = jnp.geomspace(0.1, 1e6, 16).reshape(-1, 1, 1, 1)  # 0.1 stays small; from ~1e4 float64 overflows
    inputs = scales * jnp.asarray(np.random.default_rng(5).random((16, *input_shape)))
    labels = jnp.arange(16) % classes
    auto, hand = (net_from_config(from_dict({"model": {**model, "layers": 4, "init": "normal", "init_scale": 0.3,
                                                       "gamma": 0.5, "hand_vjp": on}}), input_shape, classes)
                  for on in (False, True))
    result = gradient_agreement(auto, hand, Objective(), inputs, labels)
    np.testing.assert_array_equal(result["finite_b"], result["finite_a"])
    np.testing.assert_array_equal(result["finite_a"], finite_examples(auto, inputs, labels))  # the training filter
    assert 0 < result["finite_a"].sum() < len(inputs)  # both finite and overflowing examples
    assert np.max(result["rel_diff"]) < 1e-10


def test_hand_vjp_refuses_a_forward_mode_strategy_and_other_fields():
    model, input_shape, classes = HAND_VJP_NETS["conv_cubic"]
    cfg = from_dict({"model": {**model, "hand_vjp": True}, "gradient": {"strategy": "optimize_then_discretize"}})
    with pytest.raises(ConfigError, match="forward mode"):
        net_from_config(cfg, input_shape, classes)
    with pytest.raises(ConfigError, match="only the cubic fields"):
        net_from_config(from_dict({"model": {"field": "resnet", "hand_vjp": True}}), (2,), 2)


def test_odenet_head_reads_either_layout():
    """`odenet_head` (GroupNorm -> ReLU -> average pool -> linear) on the channels-last state gives the logits it
    gives on the channels-first one; on a dense state it names the problem."""
    images = jnp.asarray(np.random.default_rng(6).random((3, 1, 6, 6)))
    nets = [net_from_config(paper_config(init="normal", init_scale=0.2, conv_impl="xla", readout="odenet_head",
                                         **layout), (1, 6, 6), 10)
            for layout in ({}, {"field": "conv_cubic_nhwc", "stem": "channels_last"})]
    assert nets[1].readout.norm.weight.shape == (10,)  # the channels, not the image height
    np.testing.assert_allclose(nets[1](images), nets[0](images), rtol=1e-12, atol=1e-12)
    with pytest.raises(ConfigError, match="odenet_head expects image states"):
        net_from_config(from_dict({"model": {"field": "cubic", "augment": 2, "readout": "odenet_head"}}), (2,), 2)


def test_channels_last_field_needs_the_channels_last_stem():
    with pytest.raises(ConfigError, match="model.stem: channels_last"):
        net_from_config(paper_config(field="conv_cubic_nhwc"), (1, 6, 6), 10)
    with pytest.raises(ConfigError, match="max_pool_softmax pools over space"):  # the readout names a dense state
        net_from_config(from_dict({"model": {"field": "cubic", "readout": "max_pool_softmax"}}), (2,), 2)


def test_im2col_equals_lax_conv_with_gradients():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((3, 10, 7, 7)))
    kernel = jnp.asarray(rng.standard_normal((10, 10, 3, 3)))
    for impl in FLOAT64_IMPLS:
        np.testing.assert_allclose(CONV_IMPLS[impl](x, kernel), conv3x3_xla(x, kernel), rtol=1e-12, atol=1e-11)
        loss = lambda f, xx, kk: jnp.sum(jnp.sin(f(xx, kk)))  # noqa: E731
        g_impl = jax.grad(lambda xx, kk: loss(CONV_IMPLS[impl], xx, kk), argnums=(0, 1))(x, kernel)
        g_ref = jax.grad(lambda xx, kk: loss(conv3x3_xla, xx, kk), argnums=(0, 1))(x, kernel)
        for a, b in zip(g_impl, g_ref):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("batch", [3, 8])  # 8: the kernel gradient is accumulated 4 images at a time
def test_split_conv_gradients_equal_lax_conv_with_an_uneven_kernel(batch):
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((batch, 10, 6, 5)))
    kernel = jnp.asarray(rng.standard_normal((7, 10, 3, 3)))
    weights = jnp.asarray(rng.standard_normal((batch, 7, 6, 5)))
    loss = lambda f, xx, kk: jnp.sum(weights * f(xx, kk) ** 2)  # noqa: E731
    g_split = jax.grad(lambda xx, kk: loss(CONV_IMPLS["xla_split"], xx, kk), argnums=(0, 1))(x, kernel)
    g_ref = jax.grad(lambda xx, kk: loss(conv3x3_xla, xx, kk), argnums=(0, 1))(x, kernel)
    for a, b in zip(g_split, g_ref):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def random_model(cfg, input_shape, key, scale=0.05):
    """A paper-config model with random (non-zero) scaled parameters and gamma~ = 0.02."""
    model = net_from_config(cfg, input_shape, 10)
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(model, eqx.is_inexact_array))
    keys = jax.random.split(key, len(leaves))
    leaves = [scale * jax.random.normal(k, leaf.shape) for k, leaf in zip(keys, leaves)]
    model = eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), model)
    return eqx.tree_at(lambda m: m.field.gamma, model, jnp.asarray(0.02))


@pytest.mark.parametrize("impl", sorted(FLOAT64_IMPLS))
def test_euler_solve_is_residual_network_eq_109(impl):
    """x_{l+1} = x_l + kappa~_l * x_l + b~_l - gamma~ x_l^3 per channel, with T != 1."""
    cfg = paper_config(layers=5, horizon=2.5, conv_impl=impl)
    model = random_model(cfg, (1, 6, 6), jax.random.PRNGKey(2))
    images = np.random.default_rng(3).random((2, 1, 6, 6))
    x = np.concatenate([images, np.zeros((2, 9, 6, 6))], axis=1)
    kernels, biases = np.asarray(model.field.kernel.values), np.asarray(model.field.b.values)
    states = [x]
    for layer in range(5):
        x = x + reference_conv(x, kernels[layer]) + biases[layer][:, None, None] - 0.02 * x ** 3
        states.append(x)
    np.testing.assert_allclose(np.asarray(model.features(jnp.asarray(images))), x, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(model.trajectory(jnp.asarray(images))), np.stack(states), rtol=1e-12,
                               atol=1e-12)
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(images))), x.max(axis=(-2, -1)), rtol=1e-12)


def test_paper_parameter_count_18201():
    cfg = paper_config()
    model = net_from_config(cfg, (1, 28, 28), 10)
    assert isinstance(model.field, ConvCubicField)
    assert count_parameters(model) == (3 * 3 * 10 * 10 + 10) * 20 + 1 == 18201
    fixed = net_from_config(with_model(cfg, learn_gamma=False), (1, 28, 28), 10)
    assert count_parameters(fixed) == 18200


def test_gradient_matches_finite_difference():
    """d loss / d kappa~[l, o, c, i, j] and d loss / d gamma~ against central differences (float64)."""
    cfg = paper_config(layers=4)
    model = random_model(cfg, (1, 5, 5), jax.random.PRNGKey(4), scale=0.1)
    images = jnp.asarray(np.random.default_rng(5).random((3, 1, 5, 5)))
    labels, mask = jnp.asarray([1, 4, 7]), jnp.ones(3)
    # the training loss: cross entropy + lambda * eq-113 regulariser, lambda = 0.1
    loss = lambda m: cross_entropy(m(images), labels, mask) + 0.1 * smoothness(m)  # noqa: E731
    grads = eqx.filter_grad(loss)(model)
    for get, index in ((lambda m: m.field.kernel.values, (2, 3, 0, 1, 2)), (lambda m: m.field.b.values, (1, 5)),
                       (lambda m: m.field.gamma, ())):
        eps = 1e-5  # central differences: truncation ~eps^2, round-off ~1e-16/eps
        plus = eqx.tree_at(get, model, get(model).at[index].add(eps))
        minus = eqx.tree_at(get, model, get(model).at[index].add(-eps))
        fd = (loss(plus) - loss(minus)) / (2 * eps)
        analytic = get(grads)[index]
        assert abs(float(analytic)) > 1e-6  # a non-trivial entry
        np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-6, atol=1e-10)


def test_rescaled_activations_need_scaled_biases_and_gamma():
    """§4.4 after eq 112: x_s = c x solves eq 109 with b~_s = c b~ and gamma~_s = gamma~ / c^2 (kernels unchanged),
    so a learned gamma~ is only comparable between runs at the same input (activation) scale."""
    cfg = paper_config(layers=5)
    model = random_model(cfg, (1, 6, 6), jax.random.PRNGKey(6), scale=0.2)
    images = jnp.asarray(np.random.default_rng(8).random((2, 1, 6, 6)))
    c = 3.7
    scaled = eqx.tree_at(lambda m: (m.field.b.values, m.field.gamma), model,
                         (c * model.field.b.values, model.field.gamma / c ** 2))
    states = np.asarray(model.trajectory(images))
    np.testing.assert_allclose(np.asarray(scaled.trajectory(c * images)), c * states, rtol=1e-12, atol=1e-12)
    assert np.max(np.abs(float(model.field.gamma) * states ** 3)) > 1e-3  # the cubic term takes part
    # the readout (max pool) scales with c too: the softmax's temperature is not invariant
    np.testing.assert_allclose(np.asarray(scaled(c * images)), c * np.asarray(model(images)), rtol=1e-12)
