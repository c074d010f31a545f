"""The repository's copy of the RFC 4475 torture messages is intact.

`tests/data/rfc4475/SHA256SUMS` (sha256sum format: `<hex digest>  <file name>`) lists every file
of the directory; `sha256sum -c SHA256SUMS` run there checks the same thing by hand. The messages
keep their CRLF line ends and raw bytes, so `.gitattributes` there turns off git's text handling.
"""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from tests.conformance_data import DEFAULT_DIR

SUMS_FILE = DEFAULT_DIR / "SHA256SUMS"
NOT_LISTED = {"SHA256SUMS", ".gitattributes"}
LINE = re.compile(r"^([0-9a-f]{64})  ([A-Za-z0-9._-]+)$")


def read_sums() -> dict[str, str]:
    sums: dict[str, str] = {}
    for number, line in enumerate(SUMS_FILE.read_text(encoding="ascii").splitlines(), 1):
        found = LINE.match(line)
        assert found, f"SHA256SUMS line {number} is not '<sha256>  <name>': {line!r}"
        digest, name = found.groups()
        assert name not in sums, f"SHA256SUMS lists {name} twice"
        sums[name] = digest
    return sums


SUMS = read_sums()
MANIFEST = json.loads((DEFAULT_DIR / "manifest.json").read_bytes())


def sha256(name: str) -> str:
    return hashlib.sha256((DEFAULT_DIR / name).read_bytes()).hexdigest()


@pytest.mark.parametrize("name", sorted(SUMS))
def test_file_matches_its_checksum(name):
    assert (DEFAULT_DIR / name).is_file(), f"{name} is listed in SHA256SUMS but missing"
    assert sha256(name) == SUMS[name], f"{name} differs from SHA256SUMS"


def test_every_file_is_listed():
    present = {p.name for p in DEFAULT_DIR.iterdir() if p.is_file()} - NOT_LISTED
    assert present == set(SUMS), "files and SHA256SUMS disagree"


def test_manifest_and_data_files_are_listed():
    assert "manifest.json" in SUMS
    dat_files = {p.name for p in DEFAULT_DIR.glob("*.dat")}
    assert len(MANIFEST) == 49
    assert {entry["file"] for entry in MANIFEST} == dat_files


@pytest.mark.parametrize("entry", MANIFEST, ids=[entry["file"] for entry in MANIFEST])
def test_manifest_entry_has_file_and_checksum(entry):
    name = entry["file"]
    assert (DEFAULT_DIR / name).is_file(), f"manifest names {name}, which is missing"
    assert name in SUMS, f"manifest names {name}, which SHA256SUMS does not list"
    assert SUMS[name] == entry["sha256"], f"{name}: manifest and SHA256SUMS disagree"
    assert (DEFAULT_DIR / name).stat().st_size == entry["bytes"], name


def test_line_ends_untouched():
    """Every message keeps CRLF: a checkout that converted line ends would fail here first."""
    for entry in MANIFEST:
        data = (DEFAULT_DIR / entry["file"]).read_bytes()
        assert b"\r\n" in data, entry["file"]
    attributes = (DEFAULT_DIR / ".gitattributes").read_text(encoding="ascii").splitlines()
    assert "* -text" in attributes
