"""The CI entry point cannot pass with silently skipped tests.

``conftest.py`` turns a skip into a failure when ``CI=true``; ``.ci/run`` sets
that itself, so a manual ``bash .ci/run`` (or a CI that does not set it) is
as strict as the real CI.  Checked by running a small suite that skips, with
this project's conftest, in a child pytest.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_SKIPPING = '''
import pytest

def test_needs_a_peer():
    pytest.skip("the peer is not installed")

@pytest.mark.xfail(strict=True, reason="a known bug")
def test_known_bug():
    assert False

def test_plain():
    assert True
'''


def _child_pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    suite = tmp_path / "suite"
    suite.mkdir(exist_ok=True)
    for name in ("conftest.py", "peers.py"):
        shutil.copy(HERE / name, suite / name)
    (suite / "test_skipping.py").write_text(_SKIPPING)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(suite),
                           str(suite)], cwd=suite, env=env, capture_output=True, text=True, timeout=60)


def test_a_skip_fails_the_run_under_ci(tmp_path: Path) -> None:
    strict = _child_pytest(tmp_path, "true")
    assert strict.returncode == 1, strict.stdout
    assert "skipped in CI, where every peer must be present" in strict.stdout
    assert "the peer is not installed" in strict.stdout
    assert re.search(r"1 failed, 1 passed, 1 xfailed", strict.stdout), strict.stdout


def test_a_skip_is_only_a_skip_outside_ci(tmp_path: Path) -> None:
    relaxed = _child_pytest(tmp_path, None)
    assert relaxed.returncode == 0, relaxed.stdout
    assert re.search(r"1 passed, 1 skipped, 1 xfailed", relaxed.stdout), relaxed.stdout


def test_ci_run_sets_ci_itself_before_the_tests() -> None:
    script = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "set -euo pipefail" in commands
    assert "export CI=true" in commands
    # The README's commands, after CI is set: lint and the test suite.
    assert commands.index("export CI=true") < commands.index("make lint") < commands.index("make test")
