#!/usr/bin/env bash
# Run the `esc` command from a fresh checkout: creates .venv and installs the project the
# first time, then runs `esc` with your arguments. `./esc.sh serve` starts the server.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
PYTHON=${PYTHON:-python3}
if [ ! -x "$here/.venv/bin/esc" ] || [ "$here/pyproject.toml" -nt "$here/.venv/.installed" ]; then
    [ -x "$here/.venv/bin/python" ] || "$PYTHON" -m venv "$here/.venv"
    "$here/.venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$here[test]" >&2
    touch "$here/.venv/.installed"
fi
exec "$here/.venv/bin/esc" "$@"
