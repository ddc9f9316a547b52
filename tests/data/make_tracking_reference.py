"""Write tracking_reference.npz: the tracker's outputs on the scenes of tests/test_tracking_reference.py.

Run with the repository's virtual environment from the repository root:
``.venv/bin/python tests/data/make_tracking_reference.py``. Keys per scene ``<s>`` (pixels of
the scene image): ``<s>_boxes`` ``[N, 4]`` face boxes ``(x0, y0, x1, y1)``, largest first;
``<s>_mesh`` ``[478, 2]`` mesh of the largest face; ``<s>_lmk70`` ``[70, 2]`` its 70 landmarks;
and ``matte`` ``[128, 128]`` (0..1): the person mask of the astronaut's 512^2 head crop,
area-resampled to 128^2.
"""
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from test_tracking_reference import matte_of_astronaut, scenes, track_scene  # noqa: E402

from gagavatar.engine.tracking.landmarks import FaceLandmarker  # noqa: E402
from gagavatar.engine.tracking.matting import SelfieMatte  # noqa: E402


def main() -> None:
    out = {}
    with FaceLandmarker() as finder:
        for name, rgb in scenes().items():
            boxes, mesh, lmk70 = track_scene(finder, rgb)
            out.update({f"{name}_boxes": boxes, f"{name}_mesh": mesh, f"{name}_lmk70": lmk70})
        with SelfieMatte() as matte:
            out["matte"] = matte_of_astronaut(finder, matte)
    np.savez_compressed(HERE / "tracking_reference.npz", **{k: v.astype(np.float32) for k, v in out.items()})


if __name__ == "__main__":
    main()
