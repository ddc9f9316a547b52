"""GAGAvatar engine: the PyTorch side (never imports bpy).

Public API (imported lazily, so ``import gagavatar.engine`` is cheap)::

    from gagavatar import engine
    model = engine.load_model("GAGAvatar.pt", device="cpu")      # official or compact checkpoint
    flame = engine.load_flame("FLAME_with_eye.pt")               # or FLAME 2020 .pkl / .npz
    src = engine.track_image(image)                              # crop, mask, FLAME fit, camera
    avatar = model.reconstruct(src.crop[None], src.transform[None])
    verts = flame(shape=..., expression=..., pose=..., eyes=...)  # [B, 5023, 3], x5
    frame = model.render(avatar, verts, transform)               # .image [B, 3, 512, 512]
    engine.keep_large_buffers()   # a script that owns its process: CPU frames reuse their buffers

Sub-packages: :mod:`.networks` (DINOv2 encoder, Gaussian generators, StyleUNet neural renderer),
:mod:`.splatting` (Gaussian rasterization, torch and gsplat backends, per-frame fast paths),
:mod:`.tracking`, :mod:`.training`.
"""
from ._lazy import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(globals(), {
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
    # networks
    "DinoVisionTransformer": ".networks",
    "DINOBase": ".networks",
    "HarmonicEmbedding": ".networks",
    "LinearGSGenerator": ".networks",
    "ConvGSGenerator": ".networks",
    "StyleUNet": ".networks",
    # splatting
    "render_gaussians": ".splatting",
    "RenderResult": ".splatting",
    "covariance_from_scale_rotation": ".splatting",
    "PRECISIONS": ".splatting",
    "PinnedReadback": ".splatting",
    "keep_large_buffers": ".host_memory",
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
})
