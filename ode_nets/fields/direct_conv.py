"""3x3 'SAME' cross-correlation (eq 72) on channels-first buffers by width-vectorised C++ loops, a zero-copy
`jax.ffi` custom call on the CPU (`conv_impl: direct`).

oneDNN vectorises over channels (blocks of 8 with AVX2), which 10 channels fill poorly; direct_conv.cc vectorises
along the image rows instead and keeps blocks of output channels x row vectors in registers (its header comment).
It needs only a C++ compiler with OpenMP (g++), compiled on first use with -march=native (`custom_conv.load`),
and reads and writes XLA's (B, C, H, W) images and (O, C, 3, 3) kernels in place: no transposes around the call.
float32 only. Without a compiler the call raises a one-line `ConfigError` (`direct_unavailable()` gives the reason).
"""

import functools
from pathlib import Path

from ode_nets.fields.custom_conv import ConvLibrary, conv_calls, unavailable

LIBRARY = ConvLibrary(
    impl="direct", source=Path(__file__).with_name("direct_conv.cc"),
    symbols=("OdeNetsDirectConvForward", "OdeNetsDirectConvBackwardData", "OdeNetsDirectConvBackwardWeights"),
    shapes=(lambda x, k: (x[0], k[0], *x[2:]), lambda g, k: (g[0], k[1], *g[2:]), lambda x, g: (g[1], x[1], 3, 3)),
    flags=lambda: (["-O3", "-march=native"], []))
# The three calls of one bilinear form (`custom_conv.conv_calls`), float32, NCHW images and OIHW kernels:
# conv3x3_direct_nchw(x (B, C, H, W), kernel (O, C, 3, 3)) -> y = kernel * x (B, O, H, W), stride 1, zero padding 1;
# conv3x3_direct_backward_data(g (B, O, H, W), kernel) -> (B, C, H, W), the cross-correlation with the flipped,
# transposed kernel (the input gradient); conv3x3_direct_backward_weights(x, g) -> (O, C, 3, 3), the kernel gradient.
conv3x3_direct_nchw, conv3x3_direct_backward_data, conv3x3_direct_backward_weights = conv_calls(LIBRARY)
direct_unavailable = functools.partial(unavailable, LIBRARY)  # None, or why `direct` cannot be compiled and used here
