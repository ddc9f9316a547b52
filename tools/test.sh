#!/usr/bin/env bash
# The test command (CI runs exactly this; CPU only):
#   bash tools/test.sh          everything: the suite on Python 3.11 (.venv) and on Python 3.13
#                               (tools/setup.sh 3.13), then the Blender matrix: bpy 4.2, 4.5, 5.0 (Python 3.11)
#                               and 5.3 (Python 3.13), each through the user's install path
#                               (tools/blender_leg.sh); ends with one line of totals
#   bash tools/test.sh ARGS...  only the suite on Python 3.11, with pytest ARGS (development)
# GAGAVATAR_MATRIX overrides the Blender legs (default "4.2.23 4.5.15 5.0.1 5.3.0"). Venvs are
# kept in .venv and, shared by clones, in ~/.cache/gagavatar-dev ($GAGAVATAR_CACHE). A leg whose Python is missing is reported as
# skipped, never as passed; under CI=true it fails the run.
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || exit 1
if [ $# -gt 0 ]; then
    exec .venv/bin/python -m pytest -q "$@"
fi
RESULTS=.cache/results
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
export GAGAVATAR_RESULTS=$RESULTS
failed=()
missing=()
# The whole run needs about 20 GB of disk (venvs, and each Blender leg's own Install Dependencies:
# for Python 3.13 a several-GB CUDA torch); say what there is, so that a full disk reads as one.
free_gb() { df -Pk "$1" | awk 'NR == 2 { printf "%.1f", $4 / 1048576 }'; }
echo "== disk: $(free_gb .) GB free here, $(free_gb "${TMPDIR:-/tmp}") GB in ${TMPDIR:-/tmp}"

echo "== the suite on Python 3.11 (Blender modules: in the matrix)"
.venv/bin/python -m pytest -q --junitxml="$RESULTS/py3.11.xml" --ignore-glob='tests/test_blender_*' || failed+=("py3.11")

echo "== the suite on Python 3.13"
if bash tools/find_python.sh 3.13 >/dev/null; then
    if venv=$(bash tools/setup.sh 3.13); then
        PYTHONPATH="$PWD/.cache/pkg" "$venv/bin/python" -m pytest -q --junitxml="$RESULTS/py3.13.xml" \
            --ignore-glob='tests/test_blender_*' || failed+=("py3.13")
    else
        failed+=("py3.13 setup")
    fi
else
    echo "SKIPPED: python3.13 not found (install Python 3.13 to run this part)"
    missing+=("py3.13")
fi

for version in ${GAGAVATAR_MATRIX:-4.2.23 4.5.15 5.0.1 5.3.0}; do
    echo "== disk: $(free_gb "${TMPDIR:-/tmp}") GB free in ${TMPDIR:-/tmp}"
    bash tools/blender_leg.sh "$version"
    case $? in
        0) ;;
        3) missing+=("bpy-$version") ;;
        *) failed+=("bpy-$version") ;;
    esac
done

.venv/bin/python tools/summarize_results.py "$RESULTS" --not-run "${missing[*]:-}" --failed "${failed[*]:-}"
