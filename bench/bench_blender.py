"""What Blender adds to the engine's frame: a 1920x1080 F12 render of one avatar through the GAGAvatar
render engine (crop placement and resampling, colour conversion, the Coarse and Depth passes, the
compositor) against the engine's own 512^2 frame of the same avatar and view (``model.render``),
both timed in this run, in turns, best of ``--repeat`` after a warm-up turn (and the ratio of
each turn's two times, which a load that drifts during the run sways less). The render engine reuses the loaded
model and avatar between renders (networks.py caches), so only the per-frame work is timed.

Target (issue #10): the render costs at most 1.15x the engine's frame. The add-on's *Frame Memory*
preference (``--frame-memory``; Auto keeps large buffers in a command-line Blender, which this is)
is process-wide, so it applies to both timings alike.

Usage (a bpy 4.2-5.3 module in the venv, assets in ``$GAGAVATAR_ASSETS`` or ``--assets``)::

    python bench/bench_blender.py [--size 1920x1080] [--repeat 3] [--photo tests/data/astronaut.png]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _interleaved(fns, repeat: int) -> list[list[float]]:
    """Wall times in s of each function over ``repeat`` turns (after one warm-up turn); each turn
    runs all of them in turn, so that a load that comes and goes on the machine weighs on all alike."""
    times = [[] for _ in fns]
    for turn in range(repeat + 1):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            if turn:
                times[i].append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1920x1080", help="frame WxH (default 1920x1080)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--photo", default=str(REPO / "tests" / "data" / "astronaut.png"))
    parser.add_argument("--assets", help="asset folder (default $GAGAVATAR_ASSETS)")
    parser.add_argument("--frame-memory", choices=("AUTO", "KEEP", "RETURN"), default="AUTO",
                        help="the add-on's Frame Memory preference (default AUTO)")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    if args.assets:
        os.environ["GAGAVATAR_ASSETS"] = args.assets
    os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="gagavatar-bench-"))

    import bpy
    import importlib.util
    import torch
    sys.path.insert(0, str(REPO / "tools"))
    import build_extension
    from blender_farm_example import enable_extension

    module = enable_extension(build_extension.build(Path(tempfile.mkdtemp(prefix="gagavatar-zip-"))))
    ext = lambda name: importlib.import_module(f"{module}.{name}")  # noqa: E731
    bpy.ops.wm.read_homefile(use_empty=True)
    prefs = bpy.context.preferences.addons[module].preferences
    prefs.frame_memory = args.frame_memory
    assert bpy.ops.gagavatar.create_avatar(filepath=str(Path(args.photo).resolve())) == {"FINISHED"}
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y, scene.render.resolution_percentage = width, height, 100
    scene.render.use_compositing = True

    def blender_frame():
        bpy.ops.render.render()

    from gagavatar.engine.cameras import blender_to_transform
    networks, scene_views = ext("gagavatar_blender.networks"), ext("gagavatar_blender.scene_views")
    device = networks.resolve_device(prefs.device)
    model = networks.load_model(networks.asset_paths(prefs)[0], device)
    view = scene_views.avatar_views(bpy.context.evaluated_depsgraph_get(), scene.camera.matrix_world, device)[0]
    transform, _ = blender_to_transform(torch.tensor(view.camera, dtype=torch.float32), 1.0)
    vertices = torch.from_numpy(view.vertices)[None].to(device)

    def engine_frame():
        with torch.no_grad():
            model.render(view.load(), vertices, transform[None].to(device)).image.cpu()

    engine_t, blender_t = _interleaved((engine_frame, blender_frame), args.repeat)
    engine_s, blender_s = min(engine_t), min(blender_t)
    turns = sorted(b / e for e, b in zip(engine_t, blender_t))
    kept = ext("gagavatar_blender.preferences").keeps_frame_memory(prefs)
    print(f"machine: {_cpu()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"bpy {bpy.app.version_string}, device {device}; frame memory: {prefs.frame_memory.lower()} "
          f"({'kept' if kept else 'given back'}; both timings alike)")
    print(f"engine frame (512^2, model.render)       {engine_s * 1000:8.1f} ms")
    print(f"Blender F12 {width}x{height} (one avatar) {blender_s * 1000:8.1f} ms")
    print(f"ratio Blender / engine: {blender_s / engine_s:.3f} (target <= 1.15); per turn: median "
          f"{turns[len(turns) // 2]:.3f}, range {turns[0]:.3f}-{turns[-1]:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
