"""conv_impl onednn and direct: the checks of `tests/custom_conv_checks.py` (values and gradients against XLA and NumPy, jit, scan,
vmap, second order, the conv cubic net under three gradient strategies), run in a separate Python process so that
the custom calls and their OpenMP runtime are never loaded into the main test process (see that file's docstring)."""

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_checks(*args: str, env: dict[str, str] | None = None) -> None:
    """tests/custom_conv_checks.py (or the checks that `args` select) in a Python process of their own."""
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           str(TESTS / "custom_conv_checks.py"), *args], cwd=TESTS.parent, capture_output=True,
                          text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout or " skipped" in done.stdout, done.stdout[-2000:]


def test_custom_conv_checks_pass_in_their_own_process():
    run_checks()


def test_direct_8_lane_build_passes_the_direct_value_and_gradient_checks():
    """ODE_NETS_DIRECT_LANES=8: the build every CPU without AVX-512 gets, forced (and so tested) where the CPU has
    AVX-512 and the default build uses 16-float vectors."""
    run_checks("-k", "direct and values_and_gradients or fused_euler_step_and_its_vjp or stored_state",
               env={**os.environ, "ODE_NETS_DIRECT_LANES": "8"})
