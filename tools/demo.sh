#!/usr/bin/env bash
# The main job on a fresh machine: set up, get the assets, reconstruct the astronaut portrait that
# scikit-image ships (public domain) and render a short animation to out/astronaut.mp4.
#   GAGAVATAR_ASSETS=DIR  use the asset folder DIR (GAGAvatar.pt, FLAME_with_eye.pt) as it is
#   otherwise             `gagavatar assets download` asks you to accept the FLAME licence first
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
GAGA=.venv/bin/gagavatar
if ! "$GAGA" assets check >/dev/null; then
    "$GAGA" assets download
fi
mkdir -p out
.venv/bin/python -c "import cv2, skimage.data; cv2.imwrite('out/astronaut.png', skimage.data.astronaut()[..., ::-1])"
"$GAGA" reconstruct out/astronaut.png -o out/astronaut_avatar.npz --overlay out/astronaut_tracking.png
"$GAGA" render out/astronaut_avatar.npz -o out/astronaut.mp4 --frames "${FRAMES:-24}"
echo "done: out/astronaut.mp4 (tracking preview: out/astronaut_tracking.png)"
