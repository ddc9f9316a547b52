#!/usr/bin/env bash
# One leg of the Blender version matrix: `bash tools/blender_leg.sh 5.3.0 [pytest args]`.
#
# A bare venv with nothing but bpy==VERSION (and pytest), kept in the machine's cache
# ($GAGAVATAR_CACHE, default ~/.cache/gagavatar-dev/bpy-VERSION); the extension
# zip built by that Blender's own builder; the zip installed into a fresh user folder and the
# add-on's own Install Dependencies run in it, as a user would (tests/installed/); then every
# Blender test module against the dependencies that installer put in the private site-packages.
# JUnit results go to $GAGAVATAR_RESULTS (default .cache/results). Exit 3: no Python for this
# Blender on this machine (the leg did not run).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$1
shift
BUNDLED=()  # what that Blender bundles where its bpy wheel does not pin it: bpy 4.2 takes any numpy
case "$VERSION" in
    4.2.*) PYV=3.11; BUNDLED=("numpy==1.26.4") ;;
    4.5.*|5.0.*) PYV=3.11 ;;
    5.1.*|5.2.*|5.3.*) PYV=3.13 ;;
    *) echo "blender_leg.sh: no Python known for bpy $VERSION" >&2; exit 2 ;;
esac
if ! PY=$(bash tools/find_python.sh "$PYV"); then
    echo "SKIPPED bpy $VERSION: python$PYV not found (install Python $PYV, or set PYTHON${PYV/./_}, to run this leg)"
    exit 3
fi
VENV=${GAGAVATAR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gagavatar-dev}/bpy-$VERSION
if [ "$(cat "$VENV/.ready" 2>/dev/null)" != "$VERSION ${BUNDLED[*]}" ]; then
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "bpy==$VERSION" "${BUNDLED[@]}" pytest
    echo "$VERSION ${BUNDLED[*]}" > "$VENV/.ready"
fi
RESULTS=${GAGAVATAR_RESULTS:-.cache/results}
mkdir -p "$RESULTS"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gagavatar-leg-XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ZIP=$("$VENV/bin/python" tools/build_extension.py "$WORK/zip")
export BLENDER_USER_RESOURCES=$WORK/user
echo "== bpy $VERSION (Python $PYV): install the zip, Install Dependencies"
GAGAVATAR_ZIP=$ZIP GAGAVATAR_SITE_OUT=$WORK/site "$VENV/bin/python" -m pytest -q -p no:cacheprovider --noconftest \
    --junitxml="$RESULTS/bpy-$VERSION-install.xml" tests/installed/check_installed_extension.py "$@"
# The test modules import the repository as `gagavatar` (as the editable install does) and the
# engine's packages from the private site-packages the add-on's installer filled.
mkdir -p .cache/pkg
ln -sfn "$PWD" .cache/pkg/gagavatar
echo "== bpy $VERSION (Python $PYV): the Blender test modules"
PYTHONPATH="$(cat "$WORK/site"):$PWD/.cache/pkg" "$VENV/bin/python" -m pytest -q -p no:cacheprovider \
    --junitxml="$RESULTS/bpy-$VERSION.xml" tests/test_blender_*.py "$@"
