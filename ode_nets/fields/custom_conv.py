"""3x3 convolutions as zero-copy `jax.ffi` custom calls on the CPU, from C++ sources shipped with the package.

A `ConvLibrary` names one C++ source that defines three XLA FFI handlers: forward y = F(x, k), backward-data
(the input gradient Bd(g, k)) and backward-weights (the kernel gradient Bw(x, g)). It is compiled with the system
C++ compiler on first use into the user cache ($XDG_CACHE_HOME/ode_nets or ~/.cache/ode_nets, keyed by a hash of the
source, the flags, the jax version and this CPU's instruction-set flags), loaded and registered once per process;
`conv_calls` turns it into three differentiable JAX functions. Used by `onednn_conv.py` (oneDNN, NHWC) and
`direct_conv.py` (width-vectorised loops, NCHW). If the toolchain is missing, the first call raises a one-line
`ConfigError` saying what (`unavailable()` returns that reason without raising). float32 only.
"""

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir
from jaxtyping import Array

from ode_nets.errors import ConfigError

CALLS = ("forward", "backward_data", "backward_weights")
ShapeRule = Callable[[tuple[int, ...], tuple[int, ...]], tuple[int, ...]]


@dataclass(frozen=True)
class ConvLibrary:
    """One C++ source with the three convolution custom calls.

    `impl` is the `model.conv_impl` it serves (error messages say "conv_impl <impl>: ..."), `symbols` the C names
    of the forward / backward-data / backward-weights handlers, `shapes` their output shapes from the two operand
    shapes, and `flags()` the compiler flags before and after the source (raising ConfigError for a missing
    dependency). `extra` names further handlers of the source as (call, symbol) pairs, registered with the three.
    """

    impl: str
    source: Path
    symbols: tuple[str, str, str]
    shapes: tuple[ShapeRule, ShapeRule, ShapeRule]
    flags: Callable[[], tuple[list[str], list[str]]]
    extra: tuple[tuple[str, str], ...] = ()

    def target(self, call: str) -> str:
        """The name the custom call `call` is registered under with XLA."""
        return f"ode_nets_{self.source.stem}_{call}"


def find_compiler(impl: str) -> str:
    """$CXX, else g++ or c++ on PATH; ConfigError naming what was looked for."""
    wanted = os.environ.get("CXX")
    compiler = shutil.which(wanted) if wanted else shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise ConfigError(f"conv_impl {impl}: no C++ compiler ({f'$CXX={wanted}' if wanted else 'g++ or c++'} "
                          "not found on PATH)")
    return compiler


def _cache_dir() -> Path:
    """$XDG_CACHE_HOME/ode_nets, else ~/.cache/ode_nets."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ode_nets"


def _cpu_flags() -> str:
    """This CPU's instruction-set flags (Linux), so that a -march=native build is never loaded on another CPU."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), platform.machine())
    except OSError:
        return platform.machine()


def _compile(lib: ConvLibrary, cmd: list[str], target: Path) -> None:
    """Run `cmd` (ending in `-o`) into `target` via a temporary file and an atomic rename; ConfigError if it fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run([*cmd, tmp], capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or ["no output"]
            first = next((line for line in lines if "error" in line), lines[-1]).strip()
            raise ConfigError(f"conv_impl {lib.impl}: compiling {lib.source.name} failed: {first}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def load(lib: ConvLibrary) -> ctypes.CDLL:
    """The compiled library (compiled once per source, flags, jax and CPU; registered once per process)."""
    before, after = lib.flags()
    compiler = find_compiler(lib.impl)
    cmd = [compiler, *before, "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w", f"-I{jax.ffi.include_dir()}",
           str(lib.source), *after, "-o"]
    key = hashlib.sha256(lib.source.read_bytes() + "|".join([*cmd, jax.__version__, _cpu_flags()]).encode())
    target = _cache_dir() / f"{lib.source.stem}-{key.hexdigest()[:16]}.so"
    if not target.exists():
        _compile(lib, cmd, target)
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")  # read when libgomp loads: idle workers sleep
    dll = ctypes.CDLL(str(target))
    for call, symbol in (*zip(CALLS, lib.symbols), *lib.extra):
        jax.ffi.register_ffi_target(lib.target(call), jax.ffi.pycapsule(getattr(dll, symbol)), platform="cpu")
    return dll


def prepare(lib: ConvLibrary, *operands: Array) -> None:
    """Compile and register `lib` (once), and refuse a non-float32 operand with a ConfigError naming the impl."""
    load(lib)
    for operand in operands:
        if operand.dtype != jnp.float32:
            raise ConfigError(f"conv_impl {lib.impl}: float32 only (no {operand.dtype} kernels); "
                              "use conv_impl xla_split with jax_enable_x64")


def unavailable(lib: ConvLibrary) -> str | None:
    """None if `lib` can be compiled and loaded here, else the one-line reason (for skips and checks)."""
    try:
        load(lib)
    except ConfigError as error:
        return str(error)
    return None


def _batched(prim: Primitive, args: tuple[Array, Array], dims: tuple[int | None, int | None]) -> tuple[Array, int]:
    """vmap rule: one call per batch entry (a `lax.map`), an unbatched operand broadcast."""
    size = next(arg.shape[d] for arg, d in zip(args, dims) if d is not None)
    a, b = (jnp.broadcast_to(arg, (size, *arg.shape)) if d is None else jnp.moveaxis(arg, d, 0)
            for arg, d in zip(args, dims))
    return lax.map(lambda ab: prim.bind(*ab), (a, b)), 0


def _primitive(lib: ConvLibrary, call: str, shape: ShapeRule) -> Primitive:
    """A JAX primitive for one custom call: evaluation, abstract evaluation, CPU lowering, vmap."""
    name = lib.target(call)
    prim = Primitive(name)
    prim.def_impl(lambda a, b: jax.ffi.ffi_call(name, jax.ShapeDtypeStruct(shape(a.shape, b.shape), jnp.float32))(a, b))
    prim.def_abstract_eval(lambda a, b: jax.core.ShapedArray(shape(a.shape, b.shape), jnp.float32))
    mlir.register_lowering(prim, jax.ffi.ffi_lowering(name), platform="cpu")
    batching.primitive_batchers[prim] = functools.partial(_batched, prim)
    return prim


def conv_calls(lib: ConvLibrary) -> tuple[Callable[[Array, Array], Array], ...]:
    """(forward(x, k), backward_data(g, k), backward_weights(x, g)) of `lib` as differentiable JAX functions.

    The three are one bilinear form <F(x, k), g> = <x, Bd(g, k)> = <k, Bw(x, g)>: each is bilinear (its JVP is
    itself) and its transposes are the other two, so forward and reverse mode of any order work (diffrax's
    optimize-then-discretize takes a forward-mode Jacobian of the backward pass). The library is compiled and
    registered on the first call; a non-float32 operand is refused with a ConfigError.
    """
    prims = [_primitive(lib, call, shape) for call, shape in zip(CALLS, lib.shapes)]

    def bound(prim: Primitive) -> Callable[[Array, Array], Array]:
        def call(a: Array, b: Array) -> Array:
            prepare(lib, a, b)
            return prim.bind(a, b)
        return call

    forward, backward_data, backward_weights = (bound(p) for p in prims)
    ad.defbilinear(prims[0], lambda ct, x, k: backward_data(ct, k), lambda ct, x, k: backward_weights(x, ct))
    ad.defbilinear(prims[1], lambda ct, g, k: forward(ct, k), lambda ct, g, k: backward_weights(ct, g))
    ad.defbilinear(prims[2], lambda ct, x, g: backward_data(g, ct), lambda ct, x, g: forward(x, ct))
    return forward, backward_data, backward_weights
