"""The typed seams stay typed: `mypy --strict` passes on the packages listed here.

Each path in STRICT_PATHS (relative to the repository root) is checked with the settings of
pyproject.toml's [tool.mypy] plus --strict. mypy is part of the `test` extra; when it is
missing this test fails rather than skips, so a CI run without it cannot pass unnoticed.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# Packages held to `mypy --strict`. Add a package here once it passes.
STRICT_PATHS = ["domain", "sip_adapter/protocol"]


def test_strict_paths_pass_mypy_strict(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.fail(f"mypy is not installed in {sys.executable}; install the test extra: "
                    f"pip install -e '.[test]'", pytrace=False)
    missing = [path for path in STRICT_PATHS if not (REPO_ROOT / path).exists()]
    assert not missing, f"STRICT_PATHS names paths that do not exist: {missing}"
    command = [
        sys.executable, "-m", "mypy", "--strict",
        "--config-file", str(REPO_ROOT / "pyproject.toml"),
        # The cache goes to pytest's temporary directory, never into the repository.
        "--cache-dir", str(tmp_path / "mypy_cache"),
        *STRICT_PATHS,
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, (
        f"mypy --strict {' '.join(STRICT_PATHS)} failed (exit {result.returncode}):\n"
        f"{result.stdout}{result.stderr}")
