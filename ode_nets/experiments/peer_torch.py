"""The PyTorch + torchdiffeq twin of the convolutional cubic model (eq 75), for benchmarks only.

Same network as `ODENet` with `field: conv_cubic`, `readout: max_pool_softmax`, Euler on the
layer grid: state (B, C, H, W) float32, scaled parameters kappa~ (L, C, C, 3, 3), b~ (L, C) and
gamma~ (eq 110), loss = cross entropy + lambda * eq 113. Gradients either through the solver
(`torchdiffeq.odeint`, discretize-then-optimize) or by the continuous adjoint
(`torchdiffeq.odeint_adjoint`, optimize-then-discretize).

Runs on the CPU, or on a CUDA GPU with `device="cuda"` (the benchmark picks it when JAX runs on a GPU).
Needs the optional `bench` extra (torch, torchdiffeq). It runs in its own process
(`python -m ode_nets.experiments.peer_torch --serve IN.npz`, timed in rounds interleaved with the benchmark's own
steps) so that torch's threads and its peak resident memory are measured apart from JAX's, with the same
allocator setting as the benchmark's own process (`host_memory.retain_freed_memory`: torch's CPU tensors come
from glibc's malloc too).
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ode_nets.host_memory import retain_freed_memory
from ode_nets.solvers.stepping import backward_grid


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; peak RSS where /proc is missing)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RSSSampler:
    """Peak growth of the current RSS over a block, sampled every `interval` s by a thread.

    (`ru_maxrss` cannot be used: the process peak is often reached while importing torch.)
    """

    def __init__(self, interval: float = 5e-4) -> None:
        self.interval, self.peak, self._stop = interval, 0, threading.Event()

    def __enter__(self) -> "RSSSampler":
        self.base = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.base


def build(arrays: dict[str, np.ndarray], horizon: float, threads: int, device: str = "cpu"):
    """The torch field module, the forward grid, and the loss function of (field, x, y, adjoint)."""
    import torch

    torch.set_num_threads(threads)
    grid = torch.from_numpy(arrays["grid"].astype(np.float32)).to(device)
    return conv_cubic_module(arrays, grid, horizon, device), loss_function(arrays, grid, horizon, device)


def conv_cubic_module(arrays: dict[str, np.ndarray], grid: Any, horizon: float, device: str):
    """dx/dt = (kappa~(t) * x + b~(t) - gamma~ x^3) / dt, parameters piecewise constant in t (eqs 75, 110), as a
    torch module holding the same parameters as the JAX net."""
    import torch
    import torch.nn.functional as F

    layers = len(grid) - 1
    dt = horizon / layers
    as_param = lambda a: torch.nn.Parameter(torch.from_numpy(np.array(a)).to(device))  # noqa: E731 - a copy

    class ConvCubic(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.kernel, self.b = as_param(arrays["kernel"]), as_param(arrays["b"])
            self.gamma = as_param(np.asarray(arrays["gamma"], np.float32))

        def forward(self, t: "torch.Tensor", x: "torch.Tensor") -> "torch.Tensor":
            l = torch.clamp(torch.searchsorted(grid, t.reshape(1).to(grid.dtype), right=True) - 1, 0, layers - 1)[0]
            affine = F.conv2d(x, self.kernel[l], padding=1) + self.b[l][:, None, None]
            return (affine - self.gamma * x * x * x) / dt

    return ConvCubic()


def loss_function(arrays: dict[str, np.ndarray], grid: Any, horizon: float, device: str) -> Callable:
    """loss(field, x, y, lam, adjoint): cross entropy of the max-pooled x(T) + lam * eq 113, through torchdiffeq's
    Euler on the layer grid (`odeint`, or `odeint_adjoint` stepping back over the same grid)."""
    import torch
    import torch.nn.functional as F
    from torchdiffeq import odeint, odeint_adjoint

    forward_grid = lambda func, y0, t: grid  # noqa: E731 - torchdiffeq's grid_constructor signature
    # the adjoint solve T -> 0 steps from one ulp below each boundary, so it uses the layer it traverses
    # (torchdiffeq hands the constructor real, decreasing time and negates the result itself)
    backward = torch.from_numpy(backward_grid(arrays["grid"].astype(np.float32))).to(device)
    reverse_grid = lambda func, y0, t: backward  # noqa: E731
    t_span = torch.tensor([0.0, horizon], dtype=torch.float32, device=device)

    def loss_fn(field: Any, x: "torch.Tensor", y: "torch.Tensor", lam: float, adjoint: bool) -> "torch.Tensor":
        x0 = torch.cat([x, x.new_zeros(x.shape[0], field.kernel.shape[1] - x.shape[1], *x.shape[2:])], 1)
        # channels-last: oneDNN's fast CPU convolution layout (a plain 20-layer loop: 254 vs 489 ms NCHW)
        x0 = x0.contiguous(memory_format=torch.channels_last)
        if adjoint:
            xs = odeint_adjoint(field, x0, t_span, method="euler", options={"grid_constructor": forward_grid},
                                adjoint_options={"grid_constructor": reverse_grid})
        else:
            xs = odeint(field, x0, t_span, method="euler", options={"grid_constructor": forward_grid})
        logits = torch.amax(xs[-1], dim=(-2, -1))
        reg = 0.5 * (torch.sum(torch.diff(field.kernel, dim=0) ** 2) + torch.sum(torch.diff(field.b, dim=0) ** 2))
        return F.cross_entropy(logits, y) + lam * reg

    return loss_fn


class CudaMemory:
    """Peak growth of torch's CUDA allocator over a block (the GPU twin of `RSSSampler`)."""

    def __enter__(self) -> "CudaMemory":
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.cuda.synchronize()
        self.growth = torch.cuda.max_memory_allocated() - self.base


class TorchTwin:
    """The twin at the given weights: its loss and gradient (and the memory of that first forward + backward) on
    construction, then timed SGD steps (forward + backward + update) on demand."""

    def __init__(self, arrays: dict[str, np.ndarray], *, horizon: float, lam: float, adjoint: bool, threads: int,
                 learning_rate: float, device: str = "cpu") -> None:
        import torch

        self.field, self.loss_fn = build(arrays, horizon, threads, device)
        self.x = torch.from_numpy(arrays["x"]).to(device)
        self.y = torch.from_numpy(arrays["y"].astype(np.int64)).to(device)
        self.lam, self.adjoint = lam, adjoint
        self.sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        with CudaMemory() if device == "cuda" else RSSSampler() as memory:  # what autograd / the adjoint keeps alive
            loss = self.loss_fn(self.field, self.x, self.y, lam, adjoint)
            loss.backward()
        grads = {name: p.grad.detach().cpu().numpy().tolist() for name, p in self.field.named_parameters()}
        self.first = {"loss": float(loss), "grads": grads,
                      "threads": torch.get_num_threads(), "peak_rss_delta_bytes": memory.growth,
                      "torch_version": torch.__version__, "device": device}
        self.optimizer = torch.optim.SGD(self.field.parameters(), lr=learning_rate)

    def steps(self, n: int) -> list[float]:
        """Wall time of each of n training steps."""
        times = []
        for _ in range(n):
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=False)
            self.loss_fn(self.field, self.x, self.y, self.lam, self.adjoint).backward()
            self.optimizer.step()
            self.sync()
            times.append(time.perf_counter() - start)
        return times


def run(arrays: dict[str, np.ndarray], *, warmup: int, steps: int, **options: Any) -> dict:
    """Loss and gradient at the given weights, then `steps` timed SGD steps after `warmup` untimed ones."""
    twin = TorchTwin(arrays, **options)
    twin.steps(warmup)
    times = twin.steps(steps)
    return {**twin.first, "step_times_s": times, "median_s": statistics.median(times) if times else None}


def serve(arrays: dict[str, np.ndarray], *, warmup: int, **options: Any) -> None:
    """The twin as a server for interleaved timing: one JSON line with loss, gradient and memory once it is warm,
    then for each line n read from stdin one JSON line with the times of n more steps; ends at end of input."""
    twin = TorchTwin(arrays, **options)
    twin.steps(warmup)
    print(json.dumps(twin.first), flush=True)
    for line in sys.stdin:
        print(json.dumps({"step_times_s": twin.steps(int(line))}), flush=True)


def main(argv: list[str]) -> int:
    """`python -m ode_nets.experiments.peer_torch --serve IN.npz` (`serve`); IN.npz holds arrays and a JSON `options`
    string."""
    if len(argv) != 2 or argv[0] != "--serve":
        print("usage: python -m ode_nets.experiments.peer_torch --serve IN.npz", file=sys.stderr)
        return 2
    retain_freed_memory()
    with np.load(argv[1]) as data:
        arrays = {k: data[k] for k in data.files if k != "options"}
        options = json.loads(str(data["options"]))
    serve(arrays, **options)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
