"""Mediapipe plumbing of the tracker: models from the asset folder, native stderr noise silenced."""
import os
import subprocess
import sys
import textwrap

import pytest

from gagavatar.engine.errors import AssetError
from gagavatar.engine.tracking.landmarks import FaceLandmarker
from gagavatar.engine.tracking.matting import SelfieMatte


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=300)


@pytest.mark.parametrize("make", [FaceLandmarker, SelfieMatte])
def test_missing_model_names_the_remedy(make, tmp_path):
    with pytest.raises(AssetError) as err:
        make(assets=tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path) in msg and "gagavatar assets download" in msg


def test_damaged_model_is_refused(tmp_path, tracking_models):
    good = (tracking_models / "selfie_segmentation.tflite").read_bytes()
    (tmp_path / "selfie_segmentation.tflite").write_bytes(good[:-1])
    with pytest.raises(AssetError, match="not the expected selfie_segmentation.tflite .*gagavatar assets download"):
        SelfieMatte(assets=tmp_path)


def test_native_stderr_is_silenced_python_stderr_kept():
    r = _run("""
        import os, sys
        from gagavatar.engine.tracking.quiet import native_stderr_silenced
        try:
            with native_stderr_silenced():
                os.write(2, b"I0000 native noise\\n")
                print("python-side message", file=sys.stderr)
                raise ValueError("python-side error")
        finally:
            os.write(2, b"native after\\n")
    """)
    assert r.returncode == 1
    assert "native noise" not in r.stderr
    assert "python-side message" in r.stderr and "ValueError: python-side error" in r.stderr
    assert "native after" in r.stderr


def test_tracking_writes_nothing_to_stderr(tracking_models):
    r = _run("""
        import numpy as np, skimage.data, torch
        from gagavatar.engine.tracking.landmarks import FaceLandmarker
        from gagavatar.engine.tracking.matting import SelfieMatte
        rgb = skimage.data.astronaut()
        with FaceLandmarker() as finder, SelfieMatte() as matte:
            mesh = finder.mesh(rgb, finder.detect(rgb)[0].box)
            matte(torch.rand(3, 64, 64))
        print(mesh.shape)
    """, GAGAVATAR_ASSETS=str(tracking_models))
    assert r.returncode == 0 and r.stdout.strip() == "(478, 2)"
    assert r.stderr == ""
