"""GAGAvatar engine: the PyTorch side (never imports bpy).

Public API (imported lazily, so ``import gagavatar.engine`` is cheap)::

    from gagavatar import engine
    model = engine.load_model("GAGAvatar.pt", device="cpu")      # official or compact checkpoint
    flame = engine.load_flame("FLAME_with_eye.pt")               # or FLAME 2020 .pkl / .npz
    src = engine.track_image(image)                              # crop, mask, FLAME fit, camera
    avatar = model.reconstruct(src.crop[None], src.transform[None])
    verts = flame(shape=..., expression=..., pose=..., eyes=...)  # [B, 5023, 3], x5
    frame = model.render(avatar, verts, transform)               # .image [B, 3, 512, 512]
"""
from importlib import import_module

_EXPORTS = {
    # model and checkpoints
    "GAGAvatar": ".model",
    "load_model": ".checkpoints",
    "save_model": ".checkpoints",
    "Avatar": ".avatar",
    # FLAME
    "FLAME": ".flame",
    "load_flame": ".flame",
    # cameras
    "build_camera_matrices": ".cameras",
    "build_points_planes": ".cameras",
    "transform_from_pose": ".cameras",
    "look_at_transform": ".cameras",
    "transform_to_opencv": ".cameras",
    "opencv_to_transform": ".cameras",
    "transform_to_blender": ".cameras",
    "blender_to_transform": ".cameras",
    # rasterization
    "render_gaussians": ".rasterize",
    "RenderResult": ".rasterize",
    # tracking and driving sequences
    "fit_flame": ".tracking",
    "track_image": ".tracking",
    "track_video": ".tracking",
    "DrivingSequence": ".sequence",
    "load_sequence": ".sequence",
    "save_sequence": ".sequence",
    # assets
    "find_assets": ".assets",
    # errors
    "GAGAvatarError": ".errors",
    "AssetError": ".errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
