"""conv_impl onednn and direct: the checks of `tests/custom_conv_checks.py` (values and gradients against XLA and NumPy, jit, scan,
vmap, second order, the conv cubic net under three gradient strategies), run in a separate Python process so that
the custom calls and their OpenMP runtime are never loaded into the main test process (see that file's docstring)."""

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_custom_conv_checks_pass_in_their_own_process():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                           str(TESTS / "custom_conv_checks.py")], cwd=TESTS.parent, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout or " skipped" in done.stdout, done.stdout[-2000:]
