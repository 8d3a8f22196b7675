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
from pathlib import Path

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
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
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # read when libgomp loads: idle workers sleep (see the .cc)
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


def _ffi_call(name: str, a: Array, b: Array) -> Array:
    """The custom call `name` (its output shape from `SHAPES`), as a primitive is evaluated and lowered."""
    result = jax.ShapeDtypeStruct(SHAPES[name](a.shape, b.shape), jnp.float32)
    return jax.ffi.ffi_call(TARGET_PREFIX + name, result)(a, b)


def _batched(prim: Primitive, args: tuple[Array, Array], dims: tuple[int | None, int | None]) -> tuple[Array, int]:
    """vmap rule: one call per batch entry (a `lax.map`), an unbatched operand broadcast."""
    size = next(arg.shape[d] for arg, d in zip(args, dims) if d is not None)
    a, b = (jnp.broadcast_to(arg, (size, *arg.shape)) if d is None else jnp.moveaxis(arg, d, 0)
            for arg, d in zip(args, dims))
    return lax.map(lambda ab: prim.bind(*ab), (a, b)), 0


def _primitive(name: str) -> Primitive:
    """A JAX primitive for one of the three custom calls: abstract evaluation, CPU lowering, vmap."""
    prim = Primitive(TARGET_PREFIX + name)
    prim.def_impl(functools.partial(_ffi_call, name))
    prim.def_abstract_eval(lambda a, b: jax.core.ShapedArray(SHAPES[name](a.shape, b.shape), jnp.float32))
    mlir.register_lowering(prim, jax.ffi.ffi_lowering(TARGET_PREFIX + name), platform="cpu")
    batching.primitive_batchers[prim] = functools.partial(_batched, prim)
    return prim


SHAPES = {"forward": lambda x, k: (*x[:3], k[3]), "backward_data": lambda g, k: (*g[:3], k[2]),
          "backward_weights": lambda x, g: (3, 3, x[3], g[3])}
FORWARD, BACKWARD_DATA, BACKWARD_WEIGHTS = (_primitive(name) for name in TARGETS)


def _bind(prim: Primitive, a: Array, b: Array) -> Array:
    """Apply `prim` to float32 operands (the library compiled and registered first)."""
    _library()
    for operand in (a, b):
        if operand.dtype != jnp.float32:
            raise ConfigError(f"conv_impl onednn: float32 only (oneDNN has no {operand.dtype} convolution); "
                              "use conv_impl xla_split with jax_enable_x64")
    return prim.bind(a, b)


def conv3x3_onednn_nhwc(x: Float[Array, "B H W C"], kernel: Float[Array, "3 3 C O"]) -> Float[Array, "B H W O"]:
    """NHWC/HWIO 3x3 cross-correlation y = x * kernel (stride 1, zero padding 1) by oneDNN's convolution_forward."""
    return _bind(FORWARD, x, kernel)


def conv3x3_onednn_backward_data(g: Float[Array, "B H W O"], kernel: Float[Array, "3 3 C O"]
                                 ) -> Float[Array, "B H W C"]:
    """The input gradient of `conv3x3_onednn_nhwc`, the transposed convolution (convolution_backward_data)."""
    return _bind(BACKWARD_DATA, g, kernel)


def conv3x3_onednn_backward_weights(x: Float[Array, "B H W C"], g: Float[Array, "B H W O"]
                                    ) -> Float[Array, "3 3 C O"]:
    """The kernel gradient of `conv3x3_onednn_nhwc`: sum over pixels of patches(x)^T g (backward_weights)."""
    return _bind(BACKWARD_WEIGHTS, x, g)


# The three are one bilinear form <F(x, k), g> = <x, Bd(g, k)> = <k, Bw(x, g)>: each is bilinear (its JVP is
# itself) and its transposes are the other two, so forward and reverse mode of any order work (diffrax's
# optimize-then-discretize takes a forward-mode Jacobian of the backward pass). Rules get (ct, lhs, rhs).
ad.defbilinear(FORWARD, lambda ct, x, k: conv3x3_onednn_backward_data(ct, k),
               lambda ct, x, k: conv3x3_onednn_backward_weights(x, ct))
ad.defbilinear(BACKWARD_DATA, lambda ct, g, k: conv3x3_onednn_nhwc(ct, k),
               lambda ct, g, k: conv3x3_onednn_backward_weights(ct, g))
ad.defbilinear(BACKWARD_WEIGHTS, lambda ct, x, g: conv3x3_onednn_backward_data(g, ct),
               lambda ct, x, g: conv3x3_onednn_nhwc(x, ct))
