"""A fresh clone of the repository, and nothing beside it, runs the RFC 4475 tests.

The conformance data has to travel with the repository: this clones the committed tree into an
empty temporary directory and runs the torture-message tests there, with the clone as the only
source of code and data (no `ESC_RFC4475_DIR`, `PYTHONPATH` = the clone). Only committed files
are in a clone, so data added but not committed fails here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TESTS = ["tests/unit/test_rfc4475.py", "tests/unit/test_rfc4475_data.py"]


def git_toplevel() -> Path | None:
    if shutil.which("git") is None:
        return None
    found = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--show-toplevel"],
                           capture_output=True, text=True)
    if found.returncode != 0:
        return None
    return Path(found.stdout.strip()).resolve()


def clone_env(clone: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items()
           if key != "ESC_RFC4475_DIR" and not key.startswith("PYTEST_")}
    env["PYTHONPATH"] = str(clone)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    if git_toplevel() != ROOT:
        pytest.skip(f"{ROOT} is not the top of a git checkout (git missing, or an unpacked "
                    "archive): nothing to clone")
    target = tmp_path_factory.mktemp("self-contained") / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(target)],
                   check=True, capture_output=True, timeout=120)
    return target


def test_clone_imports_its_own_code_and_data(clone):
    script = ("import sip_adapter, tests.conformance_data as data; "
              "print(sip_adapter.__file__); print(data.RFC4475)")
    result = subprocess.run([sys.executable, "-c", script], cwd=clone, env=clone_env(clone),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for line in result.stdout.splitlines():
        assert Path(line).resolve().is_relative_to(clone.resolve()), line


def test_rfc4475_tests_pass_in_a_fresh_clone(clone):
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS],
        cwd=clone, env=clone_env(clone), capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    passed = re.search(r"\b(\d+) passed\b", output)
    assert passed, output[-4000:]
    assert int(passed.group(1)) > 40, output[-4000:]
    assert not re.search(r"\b\d+ (failed|errors?|skipped)\b", output), output[-4000:]
