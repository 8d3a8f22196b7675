"""3x3 'SAME' cross-correlation (eq 72) through oneDNN as a zero-copy `jax.ffi` custom call on the CPU.

The C++ side (onednn_conv.cc, shipped with the package) is compiled on first use (`custom_conv.load`) and linked
against the `libdnnl` of the `onednn-cpu-gomp` wheel; headers come from `onednn-devel-cpu-gomp`. If the compiler,
headers or library are missing, `conv3x3_onednn_nhwc` raises a one-line `ConfigError` saying which
(`onednn_unavailable()` returns that reason without raising). float32 only: oneDNN has no float64 convolution on
the CPU. `conv_impl: onednn` (`conv3x3_onednn` in fields/cubic.py) wraps it for the NCHW state.
"""

import importlib.metadata
import os
import sys
from pathlib import Path

from jaxtyping import Array, Float

from ode_nets.errors import ConfigError
from ode_nets.fields.custom_conv import ConvLibrary, conv_calls, find_compiler, unavailable


def _wheel_file(dist: str, suffix: str) -> Path | None:
    """The installed file of distribution `dist` whose path ends with `suffix` (None if not installed)."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [Path(f.locate()) for f in files if str(f).replace(os.sep, "/").endswith(suffix)]
    fallback = Path(sys.prefix) / suffix
    return next((p for p in found if p.exists()), fallback if fallback.exists() else None)


def find_toolchain() -> tuple[str, Path, Path]:
    """(compiler, oneDNN include dir, oneDNN lib dir); ConfigError naming the first thing missing."""
    compiler = find_compiler("onednn")
    header = _wheel_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    if header is None:
        raise ConfigError("conv_impl onednn: oneDNN headers missing (pip install onednn-devel-cpu-gomp==2023.2.0)")
    library = _wheel_file("onednn-cpu-gomp", "lib/libdnnl.so")
    if library is None:
        raise ConfigError("conv_impl onednn: libdnnl.so missing (pip install onednn-cpu-gomp==2023.2.0)")
    return compiler, header.parents[2], library.parent


def _flags() -> tuple[list[str], list[str]]:
    """Compiler flags before the source (optimisation, oneDNN headers) and after it (link against libdnnl)."""
    _, include, libdir = find_toolchain()
    return ["-O2", f"-I{include}"], [f"-L{libdir}", "-ldnnl", f"-Wl,-rpath,{libdir}"]


LIBRARY = ConvLibrary(
    impl="onednn", source=Path(__file__).with_name("onednn_conv.cc"),
    symbols=("OdeNetsOnednnConvForward", "OdeNetsOnednnConvBackwardData", "OdeNetsOnednnConvBackwardWeights"),
    shapes=(lambda x, k: (*x[:3], k[3]), lambda g, k: (*g[:3], k[2]), lambda x, g: (3, 3, x[3], g[3])),
    flags=_flags)
_FORWARD, _BACKWARD_DATA, _BACKWARD_WEIGHTS = conv_calls(LIBRARY)


def onednn_unavailable() -> str | None:
    """None if the oneDNN convolution can be used here, else the one-line reason (for skips and checks)."""
    return unavailable(LIBRARY)


def conv3x3_onednn_nhwc(x: Float[Array, "B H W C"], kernel: Float[Array, "3 3 C O"]) -> Float[Array, "B H W O"]:
    """NHWC/HWIO 3x3 cross-correlation y = x * kernel (stride 1, zero padding 1) by oneDNN's convolution_forward."""
    return _FORWARD(x, kernel)


def conv3x3_onednn_backward_data(g: Float[Array, "B H W O"], kernel: Float[Array, "3 3 C O"]
                                 ) -> Float[Array, "B H W C"]:
    """The input gradient of `conv3x3_onednn_nhwc`, the transposed convolution (convolution_backward_data)."""
    return _BACKWARD_DATA(g, kernel)


def conv3x3_onednn_backward_weights(x: Float[Array, "B H W C"], g: Float[Array, "B H W O"]
                                    ) -> Float[Array, "3 3 C O"]:
    """The kernel gradient of `conv3x3_onednn_nhwc`: sum over pixels of patches(x)^T g (backward_weights)."""
    return _BACKWARD_WEIGHTS(x, g)
