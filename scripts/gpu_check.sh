#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU (CUDA 13 driver): install the CUDA build of jax and the torch +
# torchdiffeq peer into .venv-gpu, then run the MNIST benchmark of README "Performance" on the GPU, with torchdiffeq
# on the same GPU beside it. Prints the table (step time, XLA memory, % of the measured matmul peak, ratio to
# torchdiffeq) and writes results.json / results.md under runs/bench/.
#
#   bash scripts/gpu_check.sh                 # CUDA 13 (jax[cuda13]); JAX_CUDA=cuda12 bash scripts/gpu_check.sh for CUDA 12
#   bash scripts/gpu_check.sh --set steps=50  # extra arguments go to scripts/benchmark.py
set -euo pipefail
cd "$(dirname "$0")/.."
cuda="${JAX_CUDA:-cuda13}"
python3 -m venv .venv-gpu
.venv-gpu/bin/pip install -q -e ".[bench]" "jax[$cuda]"
.venv-gpu/bin/python -c "import jax, sys; d = jax.devices()[0]; print('jax', jax.__version__, 'on', d.platform, d.device_kind); sys.exit(d.platform != 'gpu')" \
  || { echo "gpu_check: JAX sees no GPU (check the NVIDIA driver and JAX_CUDA=$cuda)" >&2; exit 1; }
.venv-gpu/bin/python -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available()); sys.exit(not torch.cuda.is_available())" \
  || { echo "gpu_check: torch has no CUDA here; the peer would run on the CPU (use --set peer=false to skip it)" >&2; exit 1; }
.venv-gpu/bin/python scripts/benchmark.py --config configs/bench/mnist_peer.yaml --set conv_probe=false "$@"
