"""How fast can a step of the MNIST conv net be with XLA's CPU convolution? (issue 23b, docs/performance.md)

A training step of the §5.2 network (L Euler layers, discretize-then-optimize) is, per layer, three 3x3
convolutions of 10 channels: the forward one, the input gradient (the transposed convolution) and the kernel
gradient. `conv_ceiling` times each of them alone, outside any loop (the fastest XLA gets them: finding 1 of
docs/performance.md), in float32 with 10 channels and padded to 16, and the forward one in bfloat16 with float32
accumulation; L x (forward + input gradient + kernel gradient) is then the step time that pure XLA convolutions
cannot go below, and its share of the measured matmul peak the most this design can reach. It also times
`fused_euler`, the whole L-layer Euler solve in NHWC as one `lax.scan` with a hand-written VJP (the "one fused
layer with its own VJP" idea), against plain autodiff of the same scan, and, where torch is installed, torch's
(oneDNN) channels-last convolutions of the same shapes, alone and called from the same scan through
`jax.pure_callback`. Where the custom calls build (`conv_impl: onednn` and `direct`), it times their three calls
at 8, 10 and 16 channels too: oneDNN's direct kernels vectorise over channels, so 10 channels fill two 8- (AVX2) or
one 16-lane (AVX-512) register block like 16 do; `direct` vectorises along the image rows instead. L x the sum at 10
channels is the floor of the benchmark's step with that `conv_impl`.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ode_nets.fields.direct_conv import (conv3x3_direct_backward_data, conv3x3_direct_backward_weights,
                                         conv3x3_direct_nchw, direct_unavailable)
from ode_nets.fields.onednn_conv import (conv3x3_onednn_backward_data, conv3x3_onednn_backward_weights,
                                         conv3x3_onednn_nhwc, onednn_unavailable)

# conv_impl: (why it cannot run here or None, its three calls, whether images are channels-last)
CUSTOM_CALLS = {
    "onednn": (onednn_unavailable, (conv3x3_onednn_nhwc, conv3x3_onednn_backward_data, conv3x3_onednn_backward_weights),
               True),
    "direct": (direct_unavailable, (conv3x3_direct_nchw, conv3x3_direct_backward_data, conv3x3_direct_backward_weights),
               False)}

SIZE = 28


def conv_nhwc(x: jax.Array, kernel: jax.Array, out_dtype: Any = None) -> jax.Array:
    """3x3 'SAME' cross-correlation, NHWC x HWIO -> NHWC (float32 accumulation for `out_dtype` float32)."""
    return lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    preferred_element_type=out_dtype)


def transposed_kernel(kernel: jax.Array) -> jax.Array:
    """HWIO kernel of the input gradient: flipped in space, in/out channels swapped."""
    return jnp.swapaxes(kernel[::-1, ::-1], 2, 3)


def kernel_gradient(x: jax.Array, g: jax.Array) -> jax.Array:
    """sum over pixels of patches(x)^T g: XLA's own backprop-filter convolution."""
    zeros = jnp.zeros((3, 3, x.shape[-1], g.shape[-1]), x.dtype)
    return jax.vjp(lambda k: conv_nhwc(x, k), zeros)[1](g)[0]


def fused_euler(kernels: jax.Array, biases: jax.Array, gamma: jax.Array, x: jax.Array) -> jax.Array:
    """L Euler layers x + conv(x, k_l) + b_l - gamma x^3 (eq 109 with eq 75) in NHWC, with a hand-written VJP."""
    return _fused(kernels, biases, gamma, x)


def _forward(kernels: jax.Array, biases: jax.Array, gamma: jax.Array, x: jax.Array) -> tuple[jax.Array, tuple]:
    def layer(x, kb):
        kernel, bias = kb
        return x + conv_nhwc(x, kernel) + bias - gamma * x * x * x, x

    final, states = lax.scan(layer, x, (kernels, biases))
    return final, (kernels, gamma, states)


def _backward(res: tuple, a: jax.Array) -> tuple:
    """a_l = a_{l+1} + a_{l+1} dF/dx(x_l) (eq 112), then every layer's kernel gradient at top level."""
    kernels, gamma, states = res

    def layer(carry, kx):
        a, d_gamma = carry
        kernel, x = kx
        a_prev = a + conv_nhwc(a, transposed_kernel(kernel)) - 3.0 * gamma * x * x * a
        return (a_prev, d_gamma - jnp.sum(a * x * x * x)), (a, jnp.sum(a, axis=(0, 1, 2)))

    (a0, d_gamma), (adjoints, d_biases) = lax.scan(layer, (a, jnp.zeros((), a.dtype)), (kernels, states), reverse=True)
    d_kernels = jnp.stack([kernel_gradient(states[i], adjoints[i]) for i in range(kernels.shape[0])])
    return d_kernels, d_biases, d_gamma, a0


_fused = jax.custom_vjp(lambda kernels, biases, gamma, x: _forward(kernels, biases, gamma, x)[0])
_fused.defvjp(_forward, _backward)


def autodiff_euler(kernels: jax.Array, biases: jax.Array, gamma: jax.Array, x: jax.Array) -> jax.Array:
    """The same L layers, differentiated by JAX (the reference for `fused_euler`)."""
    def layer(x, kb):
        kernel, bias = kb
        return x + conv_nhwc(x, kernel) + bias - gamma * x * x * x, None

    return lax.scan(layer, x, (kernels, biases))[0]


def median_ms(f: Callable, *args: Any, repeats: int = 10) -> float:
    """Median wall time of a jitted call (compiled and run once first)."""
    jax.block_until_ready(f(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def single_convs(batch: int, channels: int, repeats: int) -> dict[str, float]:
    """Forward, input-gradient and kernel-gradient convolution alone (ms), float32, `channels` in and out."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, SIZE, SIZE, channels), dtype=np.float32))
    kernel = jnp.asarray(0.01 * rng.standard_normal((3, 3, channels, channels), dtype=np.float32))
    return {"forward": median_ms(jax.jit(conv_nhwc), x, kernel, repeats=repeats),
            "input_gradient": median_ms(jax.jit(lambda g, k: conv_nhwc(g, transposed_kernel(k))), x, kernel,
                                        repeats=repeats),
            "kernel_gradient": median_ms(jax.jit(kernel_gradient), x, x, repeats=repeats)}


def custom_convs(impl: str, batch: int, channels: int, repeats: int) -> dict[str, float]:
    """The three custom calls of `conv_impl: impl` alone (ms), float32, `channels` in and out."""
    _, (forward, backward_data, backward_weights), channels_last = CUSTOM_CALLS[impl]
    rng = np.random.default_rng(0)
    image, kernel = (((batch, SIZE, SIZE, channels), (3, 3, channels, channels)) if channels_last  # NHWC, HWIO
                     else ((batch, channels, SIZE, SIZE), (channels, channels, 3, 3)))  # NCHW, OIHW
    x = jnp.asarray(rng.random(image, dtype=np.float32))
    kernel = jnp.asarray(0.01 * rng.standard_normal(kernel, dtype=np.float32))
    return {"forward": median_ms(jax.jit(forward), x, kernel, repeats=repeats),
            "backward_data": median_ms(jax.jit(backward_data), x, kernel, repeats=repeats),
            "backward_weights": median_ms(jax.jit(backward_weights), x, x, repeats=repeats)}


def bf16_forward(batch: int, repeats: int) -> float:
    """The forward convolution in bfloat16 with float32 accumulation (ms)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, SIZE, SIZE, 10), dtype=np.float32), jnp.bfloat16)
    kernel = jnp.asarray(0.01 * rng.standard_normal((3, 3, 10, 10), dtype=np.float32), jnp.bfloat16)
    return median_ms(jax.jit(lambda x, k: conv_nhwc(x, k, jnp.float32)), x, kernel, repeats=repeats)


def fused_vs_autodiff(batch: int, layers: int, repeats: int) -> dict[str, float]:
    """fwd + bwd of the L-layer NHWC Euler scan: hand-written VJP vs autodiff (ms), and their gradients' difference."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, SIZE, SIZE, 10), dtype=np.float32))
    kernels = jnp.asarray(0.01 * rng.standard_normal((layers, 3, 3, 10, 10), dtype=np.float32))
    biases, gamma = jnp.zeros((layers, 10)), jnp.float32(0.01)

    def grad_of(solve):
        return jax.jit(jax.grad(lambda k, b, g, x: jnp.sum(jnp.max(solve(k, b, g, x), axis=(1, 2))), argnums=(0, 1, 2)))

    fused, reference = grad_of(fused_euler), grad_of(autodiff_euler)
    difference = max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
                     for a, b in zip(fused(kernels, biases, gamma, x), reference(kernels, biases, gamma, x)))
    return {"fused_ms": median_ms(fused, kernels, biases, gamma, x, repeats=repeats),
            "autodiff_ms": median_ms(reference, kernels, biases, gamma, x, repeats=repeats),
            "gradient_rel_diff": difference}


def torch_callback_conv(torch: Any) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The NHWC 3x3 convolution computed by torch (oneDNN) through `jax.pure_callback`, with a custom VJP whose
    input and kernel gradients are torch's `convolution_backward`: oneDNN inside a jitted JAX loop, at the cost of
    a host copy of every operand and result."""
    fn = torch.nn.functional

    def nchw(a: Any) -> Any:  # an NHWC numpy array as a channels-last NCHW tensor (no copy)
        return torch.from_numpy(np.array(a)).permute(0, 3, 1, 2)

    def oihw(k: Any) -> Any:
        return torch.from_numpy(np.array(k)).permute(3, 2, 0, 1).contiguous()

    def nhwc(t: Any) -> np.ndarray:
        return t.permute(0, 2, 3, 1).contiguous().numpy()

    def backward(g: Any, x: Any, k: Any, which: tuple[bool, bool, bool]) -> Any:
        return torch.ops.aten.convolution_backward(g, x, k, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 1, which)

    def call(f: Callable, like: jax.Array, *args: jax.Array) -> jax.Array:
        return jax.pure_callback(f, jax.ShapeDtypeStruct(like.shape, like.dtype), *args)

    @jax.custom_vjp
    def conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
        return call(lambda x, k: nhwc(fn.conv2d(nchw(x), oihw(k), padding=1)), x, x, kernel)

    def conv_bwd(res: tuple, g: jax.Array) -> tuple[jax.Array, jax.Array]:
        x, kernel = res
        dx = call(lambda g, k: nhwc(backward(nchw(g), nchw(g), oihw(k), (True, False, False))[0]), x, g, kernel)
        dk = call(lambda x, g: backward(nchw(g), nchw(x), oihw(np.zeros(kernel.shape, np.float32)),
                                        (False, True, False))[1].permute(2, 3, 1, 0).contiguous().numpy(), kernel, x, g)
        return dx, dk

    conv.defvjp(lambda x, k: (conv(x, k), (x, k)), conv_bwd)
    return conv


def torch_convs(batch: int, layers: int, repeats: int) -> dict[str, float] | None:
    """torch's channels-last 10-channel convolution forward, and forward + backward (ms); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    x = torch.rand(batch, 10, SIZE, SIZE).contiguous(memory_format=torch.channels_last).requires_grad_()
    kernel = (0.01 * torch.randn(10, 10, 3, 3)).requires_grad_()

    def timed(f: Callable[[], Any]) -> float:
        f()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            f()
            times.append(time.perf_counter() - start)
        return 1e3 * statistics.median(times)

    forward = timed(lambda: torch.nn.functional.conv2d(x, kernel, padding=1))
    both = timed(lambda: torch.nn.functional.conv2d(x, kernel, padding=1).sum().backward())
    return {"forward": forward, "forward_backward": both, "callback_scan": callback_scan(torch, batch, layers, repeats)}


def callback_scan(torch: Any, batch: int, layers: int, repeats: int) -> float:
    """fwd + bwd (ms) of the L-layer Euler scan whose convolutions are torch's, through `torch_callback_conv`."""
    conv = torch_callback_conv(torch)
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.random((batch, SIZE, SIZE, 10), dtype=np.float32))
    kernels = jnp.asarray(0.01 * rng.standard_normal((layers, 3, 3, 10, 10), dtype=np.float32))

    def loss(kernels: jax.Array, x: jax.Array) -> jax.Array:
        final = lax.scan(lambda s, k: (s + conv(s, k) - 0.01 * s ** 3, None), x, kernels)[0]
        return jnp.sum(jnp.max(final, axis=(1, 2)))

    return median_ms(jax.jit(jax.grad(loss, argnums=(0, 1))), kernels, x, repeats=repeats)


def conv_ceiling(batch: int, layers: int, peak_flops: float, repeats: int = 10) -> dict[str, Any]:
    """All measurements above, and the step-time floor and best fraction of peak they imply."""
    flops = 2.0 * batch * SIZE * SIZE * 10 * 10 * 9  # one useful 3x3 convolution, 10 -> 10 channels
    f32 = {channels: single_convs(batch, channels, repeats) for channels in (10, 16)}
    per_layer = {c: sum(t.values()) for c, t in f32.items()}
    best = min(per_layer.values())
    custom = {impl: {channels: custom_convs(impl, batch, channels, repeats) for channels in (8, 10, 16)}
              for impl, (unavailable, _, _) in CUSTOM_CALLS.items() if unavailable() is None}
    custom_floor = {impl: layers * sum(times[10].values()) for impl, times in custom.items()}
    return {"batch": batch, "layers": layers, "conv_flops": flops, "peak_flops_per_s": peak_flops, "f32_ms": f32,
            "bf16_forward_ms": bf16_forward(batch, repeats), "fused": fused_vs_autodiff(batch, layers, repeats),
            "torch_ms": torch_convs(batch, layers, repeats), "floor_step_ms": layers * best,
            "floor_fraction_of_peak": _fraction_of_peak(layers, flops, layers * best, peak_flops),
            "custom_ms": custom, "custom_floor_step_ms": custom_floor,
            "custom_floor_fraction_of_peak": {impl: _fraction_of_peak(layers, flops, ms, peak_flops)
                                              for impl, ms in custom_floor.items()}}


def _fraction_of_peak(layers: int, conv_flops: float, step_ms: float, peak_flops: float) -> float:
    """Share of the peak of a step of `layers` x 3 useful convolutions taking `step_ms`."""
    return 3 * layers * conv_flops / (step_ms * 1e-3) / peak_flops


CUSTOM_NAMES = {"onednn": "oneDNN", "direct": "direct"}


def _custom_floors(c: dict) -> list[str]:
    """The floor line of each custom call measured, at 10 channels."""
    return [f"Floor from the {CUSTOM_NAMES[impl]} custom calls (`conv_impl: {impl}`): {c['layers']} x (forward + "
            f"backward data + backward weights) = {ms:.0f} ms per step = "
            f"{100 * c['custom_floor_fraction_of_peak'][impl]:.0f}% of the peak."
            for impl, ms in c.get("custom_floor_step_ms", {}).items()]


def ceiling_table(c: dict) -> str:
    """The measurements as markdown."""
    # useful GFLOP/s of a `ch`-channel conv: channels beyond the model's 10 are padding and count nothing
    gflops = lambda ms, ch=10: c["conv_flops"] * min(ch, 10) ** 2 / 100 / (ms * 1e-3) / 1e9  # noqa: E731
    peak = c["peak_flops_per_s"] / 1e9
    lines = [f"Convolutions alone (batch {c['batch']}, 28x28, 3x3, outside any loop; useful FLOPs of 10 -> 10 channels, "
             f"8 -> 8 for the 8-channel rows;"
             f" measured matmul peak {peak:.0f} GFLOP/s):", "",
             "| convolution | ms | useful GFLOP/s | % of peak |", "|---|---|---|---|"]
    for channels, times in c["f32_ms"].items():
        for name, ms in times.items():
            lines.append(f"| float32, {channels} channels, {name.replace('_', ' ')} | {ms:.2f} | {gflops(ms):.0f} | "
                         f"{100 * gflops(ms) / peak:.0f}% |")
    ms = c["bf16_forward_ms"]
    lines.append(f"| bfloat16 (float32 accumulation), 10 channels, forward | {ms:.2f} | {gflops(ms):.0f} | "
                 f"{100 * gflops(ms) / peak:.0f}% |")
    if c["torch_ms"]:
        ms = c["torch_ms"]["forward"]
        lines.append(f"| torch (oneDNN) channels-last, 10 channels, forward | {ms:.2f} | {gflops(ms):.0f} | "
                     f"{100 * gflops(ms) / peak:.0f}% |")
        ms = c["torch_ms"]["forward_backward"] / 3
        lines.append(f"| torch (oneDNN) channels-last, forward + backward, per conv | {ms:.2f} | {gflops(ms):.0f} | "
                     f"{100 * gflops(ms) / peak:.0f}% |")
    for impl, by_channels in c.get("custom_ms", {}).items():
        for channels, times in by_channels.items():
            for name, ms in times.items():
                lines.append(f"| {CUSTOM_NAMES[impl]} custom call, {channels} channels, {name.replace('_', ' ')} | "
                             f"{ms:.2f} | {gflops(ms, channels):.0f} | {100 * gflops(ms, channels) / peak:.0f}% |")
    f = c["fused"]
    lines += ["", f"Floor from XLA convolutions: {c['layers']} x (forward + input gradient + kernel gradient) = "
              f"{c['floor_step_ms']:.0f} ms per step = {100 * c['floor_fraction_of_peak']:.0f}% of the peak.",
              *_custom_floors(c),
              f"Whole {c['layers']}-layer NHWC Euler scan, forward + backward: hand-written VJP (`fused_euler`) "
              f"{f['fused_ms']:.0f} ms, autodiff {f['autodiff_ms']:.0f} ms; gradients differ by "
              f"{f['gradient_rel_diff']:.1e} (relative)."]
    if c["torch_ms"]:
        lines.append(f"The same scan with torch's convolutions called through `jax.pure_callback` "
                     f"(`torch_callback_conv`): {c['torch_ms']['callback_scan']:.0f} ms.")
    return "\n".join(lines) + "\n"
