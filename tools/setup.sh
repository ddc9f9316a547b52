#!/usr/bin/env bash
# Create a test/development venv with the pinned dependencies. Idempotent: re-running with
# unchanged requirements does nothing.
#   bash tools/setup.sh        .venv: Python 3.11, requirements.txt, the project installed editable
#                              as `gagavatar` (`.venv/bin/gagavatar`)
#   bash tools/setup.sh 3.13   Python 3.13, requirements-py313.txt, in the machine's cache
#                              ($GAGAVATAR_CACHE, default ~/.cache/gagavatar-dev/venv-py3.13, shared by
#                              clones: its torch is a several-GB CUDA build); prints its path. The
#                              project is not installed into it: run it with PYTHONPATH=.cache/pkg
#                              (a `gagavatar` link to the clone, made here).
set -euo pipefail
cd "$(dirname "$0")/.."
PYV=${1:-3.11}
case "$PYV" in
    3.11) VENV=.venv; REQ=requirements.txt ;;
    3.13) VENV=${GAGAVATAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gagavatar-dev}/venv-py3.13; REQ=requirements-py313.txt ;;
    *) echo "setup.sh: Python 3.11 or 3.13, not '$PYV'" >&2; exit 2 ;;
esac
if [ ! -x "$VENV/bin/python" ]; then
    PY=$(bash tools/find_python.sh "$PYV") || { echo "setup.sh: python$PYV not found: install Python $PYV (or set PYTHON${PYV/./_})" >&2; exit 3; }
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
fi
stamp=$VENV/.gagavatar-requirements
want=$(cat "$REQ" pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$PYV" = 3.11 ]; then
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$VENV/bin/python" -c "import gagavatar.engine" 2>/dev/null; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
        echo "$want" > "$stamp"
    fi
else
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ"
        echo "$want" > "$stamp"
    fi
    mkdir -p .cache/pkg
    ln -sfn "$PWD" .cache/pkg/gagavatar
    echo "$VENV"
fi
