"""conv_impl onednn and direct (the jax.ffi custom calls of ode_nets/fields/custom_conv.py, float32): values and
both gradients equal XLA's convolution and a NumPy loop reference (eq 72), inside jit and lax.scan, and a conv cubic
net's loss gradient equals xla_split's. Each is skipped, with the reason, where its toolchain (a C++ compiler; for
onednn also the oneDNN wheels) is missing.

Not collected by pytest itself (no test_ prefix): `tests/test_custom_conv.py` runs this file in its own Python process,
so that the main test process never loads the custom calls and their OpenMP runtime (a segfault inside a later, unrelated XLA
compilation was seen once in a full CI run that had loaded them at collection; not reproduced, cause unknown)."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers import float64, net_from_config, relative_error
from ode_nets.config import from_dict
from ode_nets.errors import ConfigError
from ode_nets.fields.cubic import CONV_IMPLS, ConvCubicField, conv3x3_direct, conv3x3_onednn, conv3x3_xla
from ode_nets.fields.custom_conv import find_compiler
from ode_nets.fields.direct_conv import (LIBRARY, _flags, cubic_euler_step_direct, cubic_euler_step_direct_vjp,
                                         cubic_euler_step_direct_vjp_at, cubic_field_direct, direct_unavailable)
from ode_nets.fields.onednn_conv import find_toolchain, onednn_unavailable
from ode_nets.fields.time_params import ParamInit
from ode_nets.losses import cross_entropy
from ode_nets.training import Objective, train_step

REASONS = {"onednn": onednn_unavailable(), "direct": direct_unavailable()}
each_impl = pytest.mark.parametrize("impl", [
    pytest.param(impl, marks=pytest.mark.skipif(reason is not None, reason=reason or "")) for impl, reason in REASONS.items()])
needs_onednn = pytest.mark.skipif(REASONS["onednn"] is not None, reason=REASONS["onednn"] or "")
needs_direct = pytest.mark.skipif(REASONS["direct"] is not None, reason=REASONS["direct"] or "")

SHAPES = [(2, 10, 10, 6, 6), (4, 10, 10, 28, 28), (3, 4, 7, 5, 8), (2, 3, 5, 9, 17)]  # batch, in, out, height, width


def reference_conv(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 3x3 cross-correlation written out with NumPy (eq 72), in float64."""
    height, width = x.shape[-2:]
    padded = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (1, 1), (1, 1)])
    return sum(np.einsum("bchw,oc->bohw", padded[..., i:i + height, j:j + width], kernel[:, :, i, j])
               for i in range(3) for j in range(3))


def operands(shape: tuple[int, ...], seed: int = 0) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Random float32 x (B, C, H, W), kernel (O, C, 3, 3) and cotangent (B, O, H, W)."""
    batch, cin, cout, height, width = shape
    rng = np.random.default_rng(seed)
    draw = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)  # noqa: E731
    return draw(batch, cin, height, width), draw(cout, cin, 3, 3), draw(batch, cout, height, width)


def assert_close(got: jax.Array, want: jax.Array) -> None:
    """float32 agreement in the relative 2-norm (sums of 9 C products, or of B H W for the kernel gradient)."""
    assert relative_error(got, want) < 2e-6, relative_error(got, want)


@each_impl
@pytest.mark.parametrize("shape", SHAPES)
def test_values_and_gradients_equal_xla(impl, shape):
    x, kernel, cotangent = operands(shape)
    out, vjp = jax.vjp(CONV_IMPLS[impl], x, kernel)
    want, vjp_ref = jax.vjp(conv3x3_xla, x, kernel)
    assert out.shape == want.shape and out.dtype == jnp.float32
    assert_close(out, want)
    np.testing.assert_allclose(out, reference_conv(np.asarray(x), np.asarray(kernel)), rtol=1e-4, atol=1e-4)
    for got, ref in zip(vjp(cotangent), vjp_ref(cotangent)):
        assert_close(got, ref)


@each_impl
def test_second_order_gradients_equal_xla(impl):
    """Gradient of a function of the first gradient (what differentiating the adjoint pass needs)."""
    x, kernel, cotangent = operands((2, 4, 6, 5, 7), seed=3)

    def grad_norm(conv, xx, kk):
        first = jax.grad(lambda a, b: jnp.sum(cotangent * jnp.sin(conv(a, b))), argnums=(0, 1))(xx, kk)
        return sum(jnp.sum(g ** 2) for g in first)

    got = jax.grad(lambda a, b: grad_norm(CONV_IMPLS[impl], a, b), argnums=(0, 1))(x, kernel)
    with float64():  # the exact value: sin of sums up to ~500 amplifies float32 rounding, XLA's own is 1e-6 off
        want = jax.grad(lambda a, b: grad_norm(conv3x3_xla, a, b), argnums=(0, 1))(
            x.astype(jnp.float64), kernel.astype(jnp.float64))
        for a, b in zip(got, want):
            assert relative_error(a.astype(jnp.float64), b) < 5e-6, relative_error(a.astype(jnp.float64), b)


@each_impl
def test_gradients_inside_jitted_scan(impl):
    """Five layers x <- x + conv(x, kernel_l) / 10 in a jitted lax.scan, gradient w.r.t. x and all kernels."""
    x, kernel, cotangent = operands((2, 10, 10, 6, 6), seed=1)
    kernels = jnp.stack([kernel * (1 + 0.1 * l) for l in range(5)])

    def loss(conv, x0, ks):
        step = lambda h, k: (h + conv(h, k) / 10, None)  # noqa: E731
        return jnp.sum(jax.lax.scan(step, x0, ks)[0] * cotangent[:, :10])

    got = jax.jit(jax.value_and_grad(lambda a, b: loss(CONV_IMPLS[impl], a, b), argnums=(0, 1)))(x, kernels)
    want = jax.value_and_grad(lambda a, b: loss(conv3x3_xla, a, b), argnums=(0, 1))(x, kernels)
    assert_close(got[0], want[0])
    for a, b in zip(got[1], want[1]):
        assert_close(a, b)


def conv_net(conv_impl: str, strategy: str, channels_last: bool = False, hand_vjp: bool = False,
             steps_per_layer: int = 1):
    """A 3-layer conv cubic net on 6x6 images (1 + 3 channels) with the same random non-zero parameters
    (`channels_last`: the same net with its state in NHWC, `conv_cubic_nhwc` behind the `channels_last` stem)."""
    layout = {"field": "conv_cubic_nhwc", "stem": "channels_last"} if channels_last else {"field": "conv_cubic"}
    cfg = from_dict({"model": {**layout, "layers": 3, "augment": 3, "readout": "max_pool_softmax",
                               "learn_gamma": True, "conv_impl": conv_impl, "hand_vjp": hand_vjp},
                     "solver": {"method": "euler", "steps_per_layer": steps_per_layer},
                     "gradient": {"strategy": strategy}})
    model = net_from_config(cfg, (1, 6, 6), 4)
    leaves, treedef = jax.tree_util.tree_flatten(eqx.filter(model, eqx.is_inexact_array))
    keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
    leaves = [0.1 * jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)]
    return eqx.combine(jax.tree_util.tree_unflatten(treedef, leaves), model)


def assert_same_net(fast, plain, seed: int) -> None:
    """Two builds of one conv cubic net give the same logits and loss gradient (kernel, bias, gamma~)."""
    images = jnp.asarray(np.random.default_rng(seed).random((3, 1, 6, 6)), jnp.float32)
    labels = jnp.array([0, 3, 1])
    assert_close(fast(images), plain(images))
    loss = lambda m: cross_entropy(m(images), labels)  # noqa: E731
    got, want = (jax.tree_util.tree_leaves(eqx.filter_jit(eqx.filter_grad(loss))(net)) for net in (fast, plain))
    assert len(got) == len(want) == 3  # kernel, bias, gamma
    for a, b in zip(got, want):
        assert_close(a, b)


STRATEGIES = ["discretize_then_optimize", "optimize_then_discretize", "analytic_adjoint"]


@each_impl
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_conv_cubic_net_loss_gradient_equals_xla_split(impl, strategy):
    """Backprop through the solve, the continuous adjoint (differentiates the conv's backward pass), eqs 76-77."""
    assert_same_net(conv_net(impl, strategy), conv_net("xla_split", strategy), seed=6)


@needs_onednn
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_channels_last_net_equals_the_channels_first_one(strategy):
    """conv_cubic_nhwc with oneDNN (no transposes in the solve): the same logits and gradients as conv_cubic."""
    assert_same_net(conv_net("onednn", strategy, channels_last=True), conv_net("onednn", strategy), seed=8)


@needs_onednn
def test_hand_vjp_channels_last_net_equals_xla_split():
    """The fastest DTO setting (oneDNN, NHWC state, hand-derived VJP): the gradient of the plain XLA net."""
    strategy = "discretize_then_optimize"
    assert_same_net(conv_net("onednn", strategy, channels_last=True, hand_vjp=True), conv_net("xla_split", strategy),
                    seed=9)


@each_impl
def test_float64_is_refused_with_a_one_line_error(impl):
    x, kernel, _ = operands((2, 3, 3, 4, 4))
    with float64(), pytest.raises(ConfigError, match=f"conv_impl {impl}: float32 only"):
        CONV_IMPLS[impl](x.astype(jnp.float64), kernel.astype(jnp.float64))


@needs_direct
def test_direct_hand_vjp_net_and_unbatched_states_equal_xla():
    """conv_impl direct with the hand-derived VJP (channels-first state, no transposes) gives xla_split's
    gradient; states without or with two batch axes are reshaped around the (B, C, H, W) call."""
    strategy = "discretize_then_optimize"
    assert_same_net(conv_net("direct", strategy, hand_vjp=True), conv_net("xla_split", strategy), seed=10)
    x, kernel, _ = operands((6, 4, 5, 7, 9), seed=11)
    assert_close(conv3x3_direct(x[0], kernel), conv3x3_xla(x[0], kernel))
    stacked = x.reshape((2, 3, *x.shape[1:]))
    assert_close(conv3x3_direct(stacked, kernel), conv3x3_xla(x, kernel).reshape((2, 3, 5, 7, 9)))


def test_registered_as_conv_impls():
    assert CONV_IMPLS["onednn"] is conv3x3_onednn and CONV_IMPLS["direct"] is conv3x3_direct


def test_a_missing_compiler_is_named(monkeypatch):
    """Without the toolchain the error is one line naming what is missing (what the skips above report)."""
    monkeypatch.setenv("CXX", "/nonexistent/g++")
    with pytest.raises(ConfigError, match=r"conv_impl onednn: no C\+\+ compiler \(\$CXX=/nonexistent/g\+\+ not found"):
        find_toolchain()
    with pytest.raises(ConfigError, match=r"conv_impl direct: no C\+\+ compiler \(\$CXX=/nonexistent/g\+\+ not found"):
        find_compiler("direct")


@each_impl
def test_forward_mode_and_vmap_equal_xla(impl):
    """jax.jvp (diffrax's forward-mode Jacobians) and jax.vmap over a stack of kernels."""
    x, kernel, _ = operands((2, 4, 5, 6, 6), seed=4)
    dx, dk, _ = operands((2, 4, 5, 6, 6), seed=5)
    for got, want in zip(jax.jvp(CONV_IMPLS[impl], (x, kernel), (dx, dk)), jax.jvp(conv3x3_xla, (x, kernel), (dx, dk))):
        assert_close(got, want)
    kernels = jnp.stack([kernel, 2 * kernel, -kernel])
    assert_close(jax.vmap(CONV_IMPLS[impl], (None, 0))(x, kernels), jax.vmap(conv3x3_xla, (None, 0))(x, kernels))


def cubic_field_xla(x: jax.Array, kernel: jax.Array, bias: jax.Array, gamma: jax.Array) -> jax.Array:
    """kappa~ * x + b~ - gamma~ x^3 (eq 75 times dt) by XLA: the reference of the fused custom call."""
    return conv3x3_xla(x, kernel) + bias[:, None, None] - gamma * x ** 3


def cubic_operands(shape: tuple[int, ...], seed: int) -> tuple[jax.Array, ...]:
    """x (B, C, H, W), kernel (C, C, 3, 3), bias (C), gamma~ () and a cotangent of x's shape, float32."""
    x, kernel, cotangent = operands(shape, seed)
    rng = np.random.default_rng(seed + 100)
    return x, 0.3 * kernel, jnp.asarray(rng.standard_normal(shape[1]), jnp.float32), jnp.float32(0.37), cotangent


@needs_direct
@pytest.mark.parametrize("shape", [s for s in SHAPES if s[1] == s[2]] + [(3, 4, 4, 5, 8), (2, 5, 5, 9, 17)])
def test_fused_cubic_field_and_its_vjp_equal_xla(shape):
    """The whole field in one call and its hand-derived reverse mode (eqs 76-78, 71: state, kernel, bias and gamma
    cotangents, summed over the batch) in another, against XLA's autodiff of the same expression, odd widths too."""
    args = cubic_operands(shape, seed=shape[-1])
    out, vjp = jax.vjp(cubic_field_direct, *args[:4])
    got = [out, *vjp(args[4])]
    with float64():  # the exact value: the bias and gamma~ sums run over B H W pixels
        wide = [a.astype(jnp.float64) for a in args]
        want, want_vjp = jax.vjp(cubic_field_xla, *wide[:4])
        for a, b in zip(got, [want, *want_vjp(wide[4])]):
            assert relative_error(a.astype(jnp.float64), b) < 1e-6, relative_error(a.astype(jnp.float64), b)


@needs_direct
def test_fused_cubic_field_under_jit_and_vmap():
    x, kernel, bias, gamma, _ = cubic_operands((2, 3, 3, 6, 7), seed=12)
    states = jnp.stack([x, -2 * x])
    got = jax.jit(jax.vmap(cubic_field_direct, (0, None, None, None)))(states, kernel, bias, gamma)
    assert_close(got, jax.vmap(cubic_field_xla, (0, None, None, None))(states, kernel, bias, gamma))
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))  # noqa: E731
    grads = jax.jit(jax.grad(loss(cubic_field_direct), argnums=(0, 1, 2, 3)))(x, kernel, bias, gamma)
    for got, want in zip(grads, jax.grad(loss(cubic_field_xla), argnums=(0, 1, 2, 3))(x, kernel, bias, gamma)):
        assert_close(got, want)


@needs_direct
@pytest.mark.parametrize("mu, fused", [(3.0, True), (2.5, False)])
def test_conv_field_uses_the_fused_call_for_the_cubic_hand_vjp(mu, fused):
    """`hand_vjp` with `conv_impl: direct` runs the field as the fused call (mu = 3), otherwise the separate
    convolution and XLA's elementwise passes; either way the field's value and gradients equal xla_split's, and so
    do the hand-derived terms `vjp` gives the analytic adjoint."""
    params = ParamInit(layers=2, horizon=1.0, init="normal", scale=0.2)
    make = lambda impl, hand: ConvCubicField.init((4, 5, 6), params, jax.random.PRNGKey(3), gamma=0.1, mu=mu,  # noqa: E731
                                                 conv_impl=impl, hand_vjp=hand)
    fast, plain = make("direct", True), make("xla_split", False)
    x = jnp.asarray(np.random.default_rng(13).standard_normal((3, 4, 5, 6)), jnp.float32)
    t = jnp.float32(0.7)
    jaxpr = str(jax.make_jaxpr(lambda f: f(t, x))(fast))
    assert (LIBRARY.target("cubic_forward") in jaxpr) is fused
    assert_close(fast(t, x), plain(t, x))
    loss = lambda f, y: jnp.sum(jnp.tanh(f(t, y)))  # noqa: E731
    got = eqx.filter_grad(loss)(fast, x), jax.grad(loss, argnums=1)(fast, x)
    want = eqx.filter_grad(loss)(plain, x), jax.grad(loss, argnums=1)(plain, x)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert_close(a, b)
    # the analytic adjoint's per-layer terms (eqs 76-78, 71): one fused call for mu = 3, the separate ones otherwise
    p, cotangent = fast.layer_params(jnp.int32(1)), jnp.cos(x)
    jaxpr = str(jax.make_jaxpr(lambda f: f.vjp(p, x, cotangent))(fast))
    assert (LIBRARY.target("cubic_backward") in jaxpr) is fused
    got, want = fast.vjp(p, x, cotangent), (plain.vjp_params(x, cotangent), plain.vjp_state(p, x, cotangent))
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        assert_close(a, b)


@needs_direct
def test_fused_cubic_field_second_order_and_jacobian_regulariser():
    """The fused VJP is differentiable again in reverse mode (the gradient of a loss on the gradient, as
    `loss.jacobian_frobenius` takes), against XLA's; and such a training step runs with `hand_vjp` + `direct`."""
    x, kernel, bias, gamma, cotangent = cubic_operands((2, 3, 3, 6, 7), seed=14)

    def grad_norm(field, *args):
        return sum(jnp.sum(g ** 2) for g in jax.vjp(field, *args)[1](cotangent))

    got = jax.grad(lambda *a: grad_norm(cubic_field_direct, *a), argnums=(0, 1, 2, 3))(x, kernel, bias, gamma)
    want = jax.grad(lambda *a: grad_norm(cubic_field_xla, *a), argnums=(0, 1, 2, 3))(x, kernel, bias, gamma)
    for a, b in zip(got, want):  # the bias's is exactly zero (F is affine in b)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(want[0]))))
    cfg = from_dict({"model": {"field": "conv_cubic", "layers": 3, "augment": 3, "readout": "max_pool_softmax",
                               "conv_impl": "direct", "hand_vjp": True}, "loss": {"jacobian_frobenius": 0.1}})
    model = net_from_config(cfg, (1, 6, 6), 4)
    optimizer = optax.sgd(0.1)
    images = jnp.asarray(np.random.default_rng(15).random((2, 1, 6, 6)), jnp.float32)
    _, _, metrics = train_step(optimizer, model, optimizer.init(eqx.filter(model, eqx.is_inexact_array)), images,
                               jnp.array([0, 1]), jnp.ones(2), Objective(jacobian_frobenius=0.1))
    assert np.isfinite(float(metrics["loss"]))


def euler_step_xla(x: jax.Array, kernel: jax.Array, bias: jax.Array, gamma: jax.Array, scale: jax.Array) -> jax.Array:
    """x + scale (kappa~ * x + b~ - gamma~ x^3): one forward-Euler step (eq 109) by XLA."""
    return x + scale * cubic_field_xla(x, kernel, bias, gamma)


@needs_direct
@pytest.mark.parametrize("shape, scale", [((2, 10, 10, 6, 6), 1.0), ((3, 4, 4, 5, 8), 0.5), ((2, 5, 5, 9, 17), 0.25)])
def test_fused_euler_step_and_its_vjp_equal_xla(shape, scale):
    """One Euler step of the field in one call, and its reverse mode (eq 112: a + scale a dF/dx, scale times the
    parameters' terms; and the step length's cotangent) in another, against float64 XLA; differentiable again."""
    x, kernel, bias, gamma, cotangent = cubic_operands(shape, seed=shape[-1] + 1)
    args = (x, kernel, bias, gamma, jnp.float32(scale))
    out, vjp = jax.vjp(cubic_euler_step_direct, *args)
    got = [out, *vjp(cotangent)]
    with float64():
        wide = [a.astype(jnp.float64) for a in (*args, cotangent)]
        want, want_vjp = jax.vjp(euler_step_xla, *wide[:5])
        tolerances = (1e-6,) * 4 + (1e-5,) * 2  # gamma~'s and the step length's: one sum each, with cancellation
        for a, b, tol in zip(got, [want, *want_vjp(wide[5])], tolerances, strict=True):
            assert relative_error(a.astype(jnp.float64), b) < tol, relative_error(a.astype(jnp.float64), b)

    def grad_norm(step, *operands):
        return sum(jnp.sum(g ** 2) for g in jax.vjp(step, *operands)[1](cotangent)[:4])

    got = jax.grad(lambda *a: grad_norm(cubic_euler_step_direct, *a), argnums=(0, 1, 3))(*args)
    want = jax.grad(lambda *a: grad_norm(euler_step_xla, *a), argnums=(0, 1, 3))(*args)
    for a, b in zip(got, want):
        assert relative_error(a, b) < 2e-5, relative_error(a, b)
    for a, b in zip(cubic_euler_step_direct_vjp(x, cotangent, kernel, gamma, jnp.float32(scale)), vjp(cotangent)):
        assert_close(a, b)  # the VJP call itself: the first four cotangents
    # The VJP call writes its dx over its cotangent operand (input_output_aliases): the caller's array stays intact,
    # and a cotangent made inside the same jit (a buffer XLA hands over without a copy) gives the same result.
    kept = np.asarray(cotangent)
    in_place = jax.jit(lambda c: cubic_euler_step_direct_vjp(x, 2.0 * c, kernel, gamma, jnp.float32(scale)))(cotangent)
    np.testing.assert_array_equal(np.asarray(cotangent), kept)
    for a, b in zip(in_place, vjp(2.0 * cotangent)):
        assert_close(a, b)


@needs_direct
@pytest.mark.parametrize("strategy", ["discretize_then_optimize", "analytic_adjoint"])
@pytest.mark.parametrize("steps_per_layer", [1, 2])
def test_euler_steps_of_the_fused_field_are_single_calls(strategy, steps_per_layer):
    """With `hand_vjp` + `direct` the solver's Euler steps (`FieldEuler`) are the fused step call and their reverse
    mode (DTO's and eq 112 of `analytic_adjoint`) the fused step-VJP call, with no field call left in the compiled
    gradient (the step length is not differentiated); logits and gradient equal the float64 ones, two steps per
    layer (half steps: the calls' scale 1/2) too."""
    fast = conv_net("direct", strategy, hand_vjp=True, steps_per_layer=steps_per_layer)
    images = jnp.asarray(np.random.default_rng(16).random((3, 1, 6, 6)), jnp.float32)
    loss = lambda m, x=images: cross_entropy(m(x), jnp.array([0, 3, 1]))  # noqa: E731
    params, static = eqx.partition(fast, eqx.is_array)
    compiled = jax.jit(lambda p: eqx.filter_grad(loss)(eqx.combine(p, static))).lower(params).compile()
    got, logits = jax.tree_util.tree_leaves(compiled(params)), eqx.filter_jit(fast)(images)
    plain = conv_net("xla_split", strategy, steps_per_layer=steps_per_layer)  # the same parameters
    with float64():  # against the exact value: gamma~'s gradient is a sum with cancellation (XLA's float32: 4e-5 off)
        wide = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, plain)
        wide_images = images.astype(jnp.float64)
        want = jax.tree_util.tree_leaves(eqx.filter_jit(eqx.filter_grad(lambda m: loss(m, wide_images)))(wide))
        assert relative_error(logits.astype(jnp.float64), eqx.filter_jit(wide)(wide_images)) < 1e-6
        for a, b in zip(got, want, strict=True):
            assert relative_error(a.astype(jnp.float64), b) < 5e-5, relative_error(a.astype(jnp.float64), b)
    hlo = compiled.as_text()
    calls = {call: hlo.count(f'"{LIBRARY.target(call)}"') for call in ("cubic_step", "cubic_step_backward",
                                                                       "cubic_step_backward_at", "cubic_forward",
                                                                       "cubic_backward")}
    assert calls["cubic_step"] >= 1 and calls["cubic_step_backward"] >= 1, calls
    assert calls["cubic_forward"] == calls["cubic_backward"] == 0, calls
    # eq 112 over the stored states reads each in place (the first step's x0 is not stored: the plain call)
    assert (calls["cubic_step_backward_at"] >= 1) == (strategy == "analytic_adjoint"), calls


@needs_direct
def test_step_vjp_at_a_stored_state_reads_it_in_place():
    """`cubic_euler_step_direct_vjp_at(xs, i, ...)` = `cubic_euler_step_direct_vjp(xs[i], ...)` bitwise for every i,
    inside a jitted reverse scan too, differentiable again (the same gradients), and an index out of range is an
    error naming it rather than a read past the buffer."""
    x, kernel, _, gamma, cotangent = cubic_operands((2, 10, 10, 6, 6), seed=21)
    xs = jnp.stack([x, 2.0 * x, -x])
    scale = jnp.float32(0.5)
    for i in range(3):
        for a, b in zip(cubic_euler_step_direct_vjp_at(xs, jnp.int32(i), cotangent, kernel, gamma, scale),
                        cubic_euler_step_direct_vjp(xs[i], cotangent, kernel, gamma, scale), strict=True):
            np.testing.assert_array_equal(a, b)

    def backward(at: bool, xs: jax.Array, a: jax.Array) -> jax.Array:
        def step(c: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
            out = (cubic_euler_step_direct_vjp_at(xs, i, c, kernel, gamma, scale) if at
                   else cubic_euler_step_direct_vjp(xs[i], c, kernel, gamma, scale))
            return out[0], None
        return jax.lax.scan(step, a, jnp.arange(3), reverse=True)[0]

    np.testing.assert_array_equal(jax.jit(functools.partial(backward, True))(xs, cotangent),
                                  jax.jit(functools.partial(backward, False))(xs, cotangent))
    grad = lambda at: jax.grad(lambda *o: jnp.sum(backward(at, *o) ** 2), argnums=(0, 1))(xs, cotangent)  # noqa: E731
    for a, b in zip(grad(True), grad(False), strict=True):
        assert_close(a, b)
    with pytest.raises(Exception, match="out of range"):
        jax.block_until_ready(cubic_euler_step_direct_vjp_at(xs, jnp.int32(3), cotangent, kernel, gamma, scale))


def test_direct_lanes_setting_is_checked(monkeypatch):
    """ODE_NETS_DIRECT_LANES: unset -> the CPU's widest vectors, 8 -> -DODE_NETS_LANES=8, anything else refused."""
    monkeypatch.delenv("ODE_NETS_DIRECT_LANES", raising=False)
    assert "-DODE_NETS_LANES=8" not in _flags()[0]
    monkeypatch.setenv("ODE_NETS_DIRECT_LANES", "8")
    assert "-DODE_NETS_LANES=8" in _flags()[0]
    monkeypatch.setenv("ODE_NETS_DIRECT_LANES", "32")
    with pytest.raises(ConfigError, match="ODE_NETS_DIRECT_LANES"):
        _flags()
