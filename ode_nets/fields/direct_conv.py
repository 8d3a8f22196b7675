"""3x3 'SAME' cross-correlation (eq 72) on channels-first buffers by width-vectorised C++ loops, a zero-copy
`jax.ffi` custom call on the CPU (`conv_impl: direct`).

oneDNN vectorises over channels (blocks of 8 with AVX2), which 10 channels fill poorly; direct_conv.cc vectorises
along the image rows instead and keeps blocks of output channels x row vectors in registers (its header comment).
It needs only a C++ compiler with OpenMP (g++), compiled on first use with -march=native (`custom_conv.load`),
and reads and writes XLA's (B, C, H, W) images and (O, C, 3, 3) kernels in place: no transposes around the call.
float32 only. Without a compiler the call raises a one-line `ConfigError` (`direct_unavailable()` gives the reason).
"""

from pathlib import Path

from jaxtyping import Array, Float

from ode_nets.fields.custom_conv import ConvLibrary, conv_calls, unavailable

LIBRARY = ConvLibrary(
    impl="direct", source=Path(__file__).with_name("direct_conv.cc"),
    symbols=("OdeNetsDirectConvForward", "OdeNetsDirectConvBackwardData", "OdeNetsDirectConvBackwardWeights"),
    shapes=(lambda x, k: (x[0], k[0], *x[2:]), lambda g, k: (g[0], k[1], *g[2:]), lambda x, g: (g[1], x[1], 3, 3)),
    flags=lambda: (["-O3", "-march=native"], []))
_FORWARD, _BACKWARD_DATA, _BACKWARD_WEIGHTS = conv_calls(LIBRARY)


def direct_unavailable() -> str | None:
    """None if the direct convolution can be compiled and used here, else the one-line reason."""
    return unavailable(LIBRARY)


def conv3x3_direct_nchw(x: Float[Array, "B C H W"], kernel: Float[Array, "O C 3 3"]) -> Float[Array, "B O H W"]:
    """NCHW/OIHW 3x3 cross-correlation y = kernel * x (stride 1, zero padding 1), direct_conv.cc's forward."""
    return _FORWARD(x, kernel)


def conv3x3_direct_backward_data(g: Float[Array, "B O H W"], kernel: Float[Array, "O C 3 3"]
                                 ) -> Float[Array, "B C H W"]:
    """The input gradient of `conv3x3_direct_nchw`: the cross-correlation with the flipped, transposed kernel."""
    return _BACKWARD_DATA(g, kernel)


def conv3x3_direct_backward_weights(x: Float[Array, "B C H W"], g: Float[Array, "B O H W"]
                                    ) -> Float[Array, "O C 3 3"]:
    """The kernel gradient of `conv3x3_direct_nchw`: sum over images and pixels of g times the shifted x."""
    return _BACKWARD_WEIGHTS(x, g)
