"""3x3 'SAME' cross-correlation (eq 72) on channels-first buffers by width-vectorised C++ loops, a zero-copy
`jax.ffi` custom call on the CPU (`conv_impl: direct`).

oneDNN vectorises over channels (blocks of 8 with AVX2), which 10 channels fill poorly; direct_conv.cc vectorises
along the image rows instead and keeps blocks of output channels x row vectors in registers (its header comment).
It needs only a C++ compiler with OpenMP (g++), compiled on first use with -march=native (`custom_conv.load`),
and reads and writes XLA's (B, C, H, W) images and (O, C, 3, 3) kernels in place: no transposes around the call.
float32 only. Without a compiler the call raises a one-line `ConfigError` (`direct_unavailable()` gives the reason).
Its vectors are 16 floats where the compiler targets AVX-512 and 8 elsewhere; `ODE_NETS_DIRECT_LANES=8` in the
environment forces the 8-lane build on an AVX-512 CPU (to compare the two, or to test the narrower one there).

The same source also holds the whole convolutional cubic field (eq 75 with eq 110) and its hand-derived reverse mode
(eqs 76-78, 71) as two calls, `cubic_field_direct`: each image is read once per pass and the field's elementwise
part and sums run while it is in cache, instead of separate passes of XLA over the state (`model.hand_vjp` with
`conv_impl: direct`; docs/performance.md). A forward-Euler step of that field, x + s (F dt) (eq 109), and its reverse
mode (eq 112) are two more calls (`cubic_euler_step_direct`), so that the step's update and the adjoint's add run in
the same pass instead of two more passes of XLA over the state (`ConvCubicField.euler_step`, `FieldEuler`). The
step's reverse mode writes its dx over its cotangent (`input_output_aliases`), and `cubic_euler_step_direct_vjp_at`
reads its state in place from a stored trajectory (the backward pass of `analytic_adjoint`, eq 112): no copies of
the 4 MB state by XLA around them.
"""

import functools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from ode_nets.errors import ConfigError
from ode_nets.fields.custom_conv import ConvLibrary, conv_calls, prepare, unavailable


def _flags() -> tuple[list[str], list[str]]:
    """-O3 -march=native, and -DODE_NETS_LANES=8 where $ODE_NETS_DIRECT_LANES asks for the 8-lane build."""
    lanes = os.environ.get("ODE_NETS_DIRECT_LANES", "")
    if lanes not in ("", "8"):
        raise ConfigError(f"ODE_NETS_DIRECT_LANES={lanes!r}: only 8 (force 8-float vectors) or unset (the CPU's "
                          "widest: 16 with AVX-512, else 8)")
    return ["-O3", "-march=native", *(["-DODE_NETS_LANES=8"] if lanes else [])], []


LIBRARY = ConvLibrary(
    impl="direct", source=Path(__file__).with_name("direct_conv.cc"),
    symbols=("OdeNetsDirectConvForward", "OdeNetsDirectConvBackwardData", "OdeNetsDirectConvBackwardWeights"),
    shapes=(lambda x, k: (x[0], k[0], *x[2:]), lambda g, k: (g[0], k[1], *g[2:]), lambda x, g: (g[1], x[1], 3, 3)),
    flags=_flags,
    extra=(("cubic_forward", "OdeNetsDirectCubicForward"), ("cubic_backward", "OdeNetsDirectCubicBackward"),
           ("cubic_step", "OdeNetsDirectCubicStep"), ("cubic_step_backward", "OdeNetsDirectCubicStepBackward"),
           ("cubic_step_backward_at", "OdeNetsDirectCubicStepBackwardAt")))
# The three calls of one bilinear form (`custom_conv.conv_calls`), float32, NCHW images and OIHW kernels:
# conv3x3_direct_nchw(x (B, C, H, W), kernel (O, C, 3, 3)) -> y = kernel * x (B, O, H, W), stride 1, zero padding 1;
# conv3x3_direct_backward_data(g (B, O, H, W), kernel) -> (B, C, H, W), the cross-correlation with the flipped,
# transposed kernel (the input gradient); conv3x3_direct_backward_weights(x, g) -> (O, C, 3, 3), the kernel gradient.
conv3x3_direct_nchw, conv3x3_direct_backward_data, conv3x3_direct_backward_weights = conv_calls(LIBRARY)
direct_unavailable = functools.partial(unavailable, LIBRARY)  # None, or why `direct` cannot be compiled and used here


def _cubic_call(call: str, results: tuple[jax.ShapeDtypeStruct, ...] | jax.ShapeDtypeStruct, *args: Array,
                aliases: dict[int, int] | None = None):
    """One of the cubic field's custom calls (compiled and registered on first use), float32 operands only;
    `aliases` {operand: result} lets XLA give the result the operand's buffer (the call is safe in place)."""
    prepare(LIBRARY, *args)
    return jax.ffi.ffi_call(LIBRARY.target(call), results, vmap_method="sequential",
                            input_output_aliases=aliases)(*args)


@jax.custom_vjp
def cubic_field_direct(x: Float[Array, "B C H W"], kernel: Float[Array, "C C 3 3"], bias: Float[Array, " C"],
                       gamma: Float[Array, ""]) -> Float[Array, "B C H W"]:
    """kernel * x + bias - gamma x^3: the convolutional cubic field (eq 75) times dt in the scaled parameters of
    eq 110, one custom call. Reverse mode only: its VJP is the hand-derived a dF/dx (eq 76), a dF/dkappa (eq 77),
    a dF/db (eq 78) and a dF/dgamma (eq 71), summed over the batch, in a second call."""
    return _cubic_call("cubic_forward", jax.ShapeDtypeStruct(x.shape, jnp.float32), x, kernel, bias, gamma)


def _cubic_fwd(x: Array, kernel: Array, bias: Array, gamma: Array) -> tuple[Array, tuple[Array, Array, Array]]:
    return cubic_field_direct(x, kernel, bias, gamma), (x, kernel, gamma)


@jax.custom_vjp
def cubic_field_direct_vjp(x: Float[Array, "B C H W"], a: Float[Array, "B C H W"], kernel: Float[Array, "C C 3 3"],
                           gamma: Float[Array, ""]) -> tuple[Array, Array, Array, Array]:
    """(a dF/dx, a dF/dkappa, a dF/db, a dF/dgamma) of `cubic_field_direct` at cotangent a, the parameters' summed
    over the batch: eqs 76, 77, 78, 71 (times dt), in one pass over the images. Differentiable once more in reverse
    mode (through `_cubic_vjp_terms`), as a loss on the gradient (`loss.jacobian_frobenius`) needs."""
    shapes = (x.shape, kernel.shape, kernel.shape[:1], ())
    return tuple(_cubic_call("cubic_backward", tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes),
                             x, a, kernel, gamma))


def _cubic_vjp_terms(x: Array, a: Array, kernel: Array, gamma: Array) -> tuple[Array, Array, Array, Array]:
    """The same four terms by the three (bilinear, differentiable) convolution calls and jnp."""
    dx = conv3x3_direct_backward_data(a, kernel) - 3.0 * gamma * x * x * a
    return dx, conv3x3_direct_backward_weights(x, a), jnp.sum(a, axis=(0, 2, 3)), -jnp.sum(a * x * x * x)


def _cubic_vjp_fwd(x: Array, a: Array, kernel: Array, gamma: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    return cubic_field_direct_vjp(x, a, kernel, gamma), (x, a, kernel, gamma)


def _cubic_vjp_bwd(residuals: tuple[Array, ...], cotangents: tuple[Array, ...]) -> tuple[Array, ...]:
    return jax.vjp(_cubic_vjp_terms, *residuals)[1](cotangents)


cubic_field_direct_vjp.defvjp(_cubic_vjp_fwd, _cubic_vjp_bwd)


def _cubic_bwd(residuals: tuple[Array, Array, Array], a: Array) -> tuple[Array, Array, Array, Array]:
    x, kernel, gamma = residuals
    return cubic_field_direct_vjp(x, a, kernel, gamma)


cubic_field_direct.defvjp(_cubic_fwd, _cubic_bwd)


@jax.custom_vjp
def cubic_euler_step_direct(x: Float[Array, "B C H W"], kernel: Float[Array, "C C 3 3"], bias: Float[Array, " C"],
                            gamma: Float[Array, ""], scale: Float[Array, ""]) -> Float[Array, "B C H W"]:
    """x + scale (kernel * x + bias - gamma x^3): one forward-Euler step (eq 109) of `cubic_field_direct` (F dt),
    `scale` = the step over the layer's dt (1 for one step per layer), one custom call. Reverse mode only: its VJP
    is eq 112's a + scale a dF/dx and scale times the parameters' terms (eqs 76-78, 71), in a second call."""
    return _cubic_call("cubic_step", jax.ShapeDtypeStruct(x.shape, jnp.float32), x, kernel, bias, gamma, scale)


@jax.custom_vjp
def cubic_euler_step_direct_vjp(x: Float[Array, "B C H W"], a: Float[Array, "B C H W"],
                                kernel: Float[Array, "C C 3 3"], gamma: Float[Array, ""], scale: Float[Array, ""]
                                ) -> tuple[Array, Array, Array, Array]:
    """(a + scale a dF/dx, scale a dF/dkappa, scale a dF/db, scale a dF/dgamma): the step's VJP at cotangent a
    (eq 112 with eqs 76-78, 71), one call, writing its first result over a (XLA then need not copy the adjoint
    state: one 4 MB copy less per layer at batch 128, measured); differentiable once more in reverse mode like
    `cubic_field_direct_vjp`."""
    shapes = (x.shape, kernel.shape, kernel.shape[:1], ())
    return tuple(_cubic_call("cubic_step_backward", tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes),
                             x, a, kernel, gamma, scale, aliases={1: 0}))


def _step_vjp_terms(x: Array, a: Array, kernel: Array, gamma: Array, scale: Array) -> tuple[Array, ...]:
    """The same four terms through the (differentiable) field VJP call."""
    dx, dk, db, dgamma = cubic_field_direct_vjp(x, a, kernel, gamma)
    return a + scale * dx, scale * dk, scale * db, scale * dgamma


def _step_vjp_fwd(*operands: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    return cubic_euler_step_direct_vjp(*operands), operands


def _step_vjp_bwd(residuals: tuple[Array, ...], cotangents: tuple[Array, ...]) -> tuple[Array, ...]:
    return jax.vjp(_step_vjp_terms, *residuals)[1](cotangents)


cubic_euler_step_direct_vjp.defvjp(_step_vjp_fwd, _step_vjp_bwd)


def _step_fwd(x: Array, kernel: Array, bias: Array, gamma: Array, scale: Array) -> tuple[Array, tuple[Array, ...]]:
    return cubic_euler_step_direct(x, kernel, bias, gamma, scale), (x, kernel, bias, gamma, scale)


def _step_bwd(residuals: tuple[Array, ...], a: Array) -> tuple[Array, ...]:
    """The step's cotangents; the step length's, sum(a F dt), needs the field again: XLA drops that call when the
    step length is not differentiated (the usual case: fixed layer times)."""
    x, kernel, bias, gamma, scale = residuals
    dx, dk, db, dgamma = cubic_euler_step_direct_vjp(x, a, kernel, gamma, scale)
    return dx, dk, db, dgamma, jnp.sum(a * cubic_field_direct(x, kernel, bias, gamma))


cubic_euler_step_direct.defvjp(_step_fwd, _step_bwd)


@jax.custom_vjp
def cubic_euler_step_direct_vjp_at(xs: Float[Array, "N B C H W"], index: Int[Array, ""], a: Float[Array, "B C H W"],
                                   kernel: Float[Array, "C C 3 3"], gamma: Float[Array, ""], scale: Float[Array, ""]
                                   ) -> tuple[Array, Array, Array, Array]:
    """`cubic_euler_step_direct_vjp(xs[index], a, kernel, gamma, scale)`, the call reading the stored state
    xs[index] in place: the backward pass of eq 112 over the forward's stored states without XLA copying each one
    out first (a 4 MB dynamic slice per step at batch 128). Writes its dx over a, as that call does."""
    shapes = (a.shape, kernel.shape, kernel.shape[:1], ())
    prepare(LIBRARY, xs, a, kernel, gamma, scale)
    call = jax.ffi.ffi_call(LIBRARY.target("cubic_step_backward_at"),
                            tuple(jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes), vmap_method="sequential",
                            input_output_aliases={2: 0})
    return tuple(call(xs, jnp.asarray(index, jnp.int32), a, kernel, gamma, scale))


def _at_fwd(*operands: Array) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    return cubic_euler_step_direct_vjp_at(*operands), operands


def _at_bwd(residuals: tuple[Array, ...], cotangents: tuple[Array, ...]) -> tuple[Array | None, ...]:
    xs, index, *rest = residuals
    at = lambda xs, *others: cubic_euler_step_direct_vjp(xs[index], *others)  # noqa: E731
    dxs, *others = jax.vjp(at, xs, *rest)[1](cotangents)
    return (dxs, None, *others)


cubic_euler_step_direct_vjp_at.defvjp(_at_fwd, _at_bwd)
