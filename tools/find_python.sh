#!/usr/bin/env bash
# Print the path of a working Python X.Y (`bash tools/find_python.sh 3.13`): $PYTHONX_Y (e.g.
# PYTHON3_13) if set, else pythonX.Y on PATH, else pyenv's. Exits 1, printing nothing, if none runs.
set -uo pipefail
v=$1
var="PYTHON${v/./_}"
for cand in "${!var:-}" "python$v"; do
    [ -n "$cand" ] || continue
    exe=$("$cand" -c 'import sys; print(sys.executable)' 2>/dev/null) && [ -n "$exe" ] && { echo "$exe"; exit 0; }
done
if command -v pyenv >/dev/null; then
    exe=$(PYENV_VERSION=$v pyenv which "python$v" 2>/dev/null) && [ -x "$exe" ] && { echo "$exe"; exit 0; }
fi
exit 1
