"""3x3 'SAME' cross-correlation (eq 72) through oneDNN as a zero-copy `jax.ffi` custom call on the CPU.

The C++ side (onednn_conv.cc, shipped with the package) is compiled with the system C++ compiler on first use
into the user cache ($XDG_CACHE_HOME/ode_nets or ~/.cache/ode_nets, keyed by a hash of the source, the jax
version and the oneDNN paths) and linked against the `libdnnl` of the `onednn-cpu-gomp` wheel; headers come
from `onednn-devel-cpu-gomp`. If the compiler, headers or library are missing, `conv3x3_onednn_nhwc` raises a
one-line `ConfigError` saying which (`onednn_unavailable()` returns that reason without raising).
float32 only: oneDNN has no float64 convolution on the CPU. `conv_impl: onednn` (`conv3x3_onednn` in
fields/cubic.py) wraps it for the NCHW state.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ode_nets.errors import ConfigError

SOURCE = Path(__file__).with_name("onednn_conv.cc")
TARGETS = {"forward": "OdeNetsOnednnConvForward", "backward_data": "OdeNetsOnednnConvBackwardData",
           "backward_weights": "OdeNetsOnednnConvBackwardWeights"}
TARGET_PREFIX = "ode_nets_onednn_conv_"


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
    wanted = os.environ.get("CXX")
    compiler = shutil.which(wanted) if wanted else shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise ConfigError(f"conv_impl onednn: no C++ compiler ({f'$CXX={wanted}' if wanted else 'g++ or c++'} "
                          "not found on PATH)")
    header = _wheel_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl.hpp")
    if header is None:
        raise ConfigError("conv_impl onednn: oneDNN headers missing (pip install onednn-devel-cpu-gomp==2023.2.0)")
    library = _wheel_file("onednn-cpu-gomp", "lib/libdnnl.so")
    if library is None:
        raise ConfigError("conv_impl onednn: libdnnl.so missing (pip install onednn-cpu-gomp==2023.2.0)")
    return compiler, header.parents[2], library.parent


def _cache_dir() -> Path:
    """$XDG_CACHE_HOME/ode_nets, else ~/.cache/ode_nets."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ode_nets"


def _compile(compiler: str, include: Path, libdir: Path, target: Path) -> None:
    """g++ the source into `target` via a temporary file and an atomic rename; ConfigError if it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w", f"-I{jax.ffi.include_dir()}", f"-I{include}",
           str(SOURCE), "-o", tmp, f"-L{libdir}", "-ldnnl", f"-Wl,-rpath,{libdir}"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            first = next((line for line in lines if "error" in line), lines[-1]).strip()
            raise ConfigError(f"conv_impl onednn: compiling {SOURCE.name} failed: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _library() -> ctypes.CDLL:
    """The compiled custom calls (compiled once per source/jax/oneDNN, loaded and registered once per process)."""
    compiler, include, libdir = find_toolchain()
    key = hashlib.sha256(SOURCE.read_bytes() + f"{jax.__version__}|{include}|{libdir}|{compiler}".encode())
    target = _cache_dir() / f"onednn_conv-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _compile(compiler, include, libdir, target)
    lib = ctypes.CDLL(str(target))
    for name, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(TARGET_PREFIX + name, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    return lib


def onednn_unavailable() -> str | None:
    """None if the oneDNN convolution can be used here, else the one-line reason (for skips and checks)."""
    try:
        _library()
    except ConfigError as error:
        return str(error)
    return None


def _call(name: str, a: Array, b: Array, out_shape: tuple[int, ...]) -> Array:
    """One of the three custom calls on float32 operands."""
    _library()
    for operand in (a, b):
        if operand.dtype != jnp.float32:
            raise ConfigError(f"conv_impl onednn: float32 only (oneDNN has no {operand.dtype} convolution); "
                              "use conv_impl xla_split with jax_enable_x64")
    result = jax.ShapeDtypeStruct(out_shape, jnp.float32)
    return jax.ffi.ffi_call(TARGET_PREFIX + name, result, vmap_method="sequential")(a, b)


def _save_operands(f: Callable[[Array, Array], Array]) -> Callable[[Array, Array], tuple[Array, tuple]]:
    """The forward rule of a bilinear op: its value, with both operands as residuals."""
    return lambda a, b: (f(a, b), (a, b))


@jax.custom_vjp
def conv3x3_onednn_nhwc(x: Float[Array, "B H W C"], kernel: Float[Array, "3 3 C O"]) -> Float[Array, "B H W O"]:
    """NHWC/HWIO 3x3 cross-correlation y = x * kernel (stride 1, zero padding 1) by oneDNN's convolution_forward."""
    return _call("forward", x, kernel, (*x.shape[:3], kernel.shape[3]))


@jax.custom_vjp
def conv3x3_onednn_backward_data(g: Float[Array, "B H W O"], kernel: Float[Array, "3 3 C O"]
                                 ) -> Float[Array, "B H W C"]:
    """The input gradient of `conv3x3_onednn_nhwc`, the transposed convolution (convolution_backward_data)."""
    return _call("backward_data", g, kernel, (*g.shape[:3], kernel.shape[2]))


@jax.custom_vjp
def conv3x3_onednn_backward_weights(x: Float[Array, "B H W C"], g: Float[Array, "B H W O"]
                                    ) -> Float[Array, "3 3 C O"]:
    """The kernel gradient of `conv3x3_onednn_nhwc`: sum over pixels of patches(x)^T g (backward_weights)."""
    return _call("backward_weights", x, g, (3, 3, x.shape[3], g.shape[3]))


def _forward_vjp(res: tuple[Array, Array], c: Array) -> tuple[Array, Array]:
    x, kernel = res
    return conv3x3_onednn_backward_data(c, kernel), conv3x3_onednn_backward_weights(x, c)


def _data_vjp(res: tuple[Array, Array], c: Array) -> tuple[Array, Array]:
    g, kernel = res
    return conv3x3_onednn_nhwc(c, kernel), conv3x3_onednn_backward_weights(c, g)


def _weights_vjp(res: tuple[Array, Array], c: Array) -> tuple[Array, Array]:
    x, g = res
    return conv3x3_onednn_backward_data(g, c), conv3x3_onednn_nhwc(x, c)


# The three are one bilinear form <F(x, k), g> = <x, Bd(g, k)> = <k, Bw(x, g)>, so each one's gradients are the
# other two: reverse mode of any order (diffrax's optimize-then-discretize differentiates the backward pass).
conv3x3_onednn_nhwc.defvjp(_save_operands(conv3x3_onednn_nhwc), _forward_vjp)
conv3x3_onednn_backward_data.defvjp(_save_operands(conv3x3_onednn_backward_data), _data_vjp)
conv3x3_onednn_backward_weights.defvjp(_save_operands(conv3x3_onednn_backward_weights), _weights_vjp)
