"""The engine's networks and avatars as the add-on's preferences resolve them, loaded once (see :mod:`.cache`).

Everything here imports the engine (torch) lazily, when called.
"""
from __future__ import annotations

import os
from pathlib import Path

import bpy

from . import cache, deps, gaussians

MODEL_FILE = "GAGAvatar.pt"
FLAME_FILE = "FLAME_with_eye.pt"


def resolve_device(choice: str) -> str:
    """The torch device for a preference value (``AUTO``, ``CUDA``, ``MPS``, ``CPU``).

    Raises:
        GAGAvatarError: the chosen accelerator is not available to torch.
    """
    import torch
    from ..engine.errors import GAGAvatarError
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if choice == "AUTO":
        return "cuda" if cuda else "mps" if mps else "cpu"
    if choice == "CUDA" and not cuda:
        raise GAGAvatarError("CUDA was chosen but torch sees no CUDA GPU: pick Auto or CPU in the GAGAvatar preferences")
    if choice == "MPS" and not mps:
        raise GAGAvatarError("MPS was chosen but torch sees no Apple GPU: pick Auto or CPU in the GAGAvatar preferences")
    return choice.lower()


ASSET_SUBFOLDER = "assets"
"""Default asset folder inside the extension's user folder (``extension_path_user(<package>, path="assets")``)."""


def asset_folder(prefs) -> Path:
    """The asset folder, where assets are looked for and downloaded to: the preference, else
    ``$GAGAVATAR_ASSETS`` (read now, so each render-farm node uses its own), else the extension's
    user folder ``assets/`` (the only place the add-on writes to by default).

    Raises:
        AssetError: the folder is a file.
    """
    from ..engine.assets import ENV_VAR
    from ..engine.errors import AssetError
    if prefs.assets_folder:
        folder, origin = Path(bpy.path.abspath(prefs.assets_folder)), "the Asset Folder preference"
    elif os.environ.get(ENV_VAR):
        folder, origin = Path(os.environ[ENV_VAR]).expanduser(), f"${ENV_VAR}"
    else:
        folder = Path(bpy.utils.extension_path_user(deps.root_package(), path=ASSET_SUBFOLDER, create=False))
        origin = "the extension's user folder"
    if folder.exists() and not folder.is_dir():
        raise AssetError(f"the asset folder {folder} (from {origin}) is a file: point it at a folder")
    return folder


def tracking_folder(prefs) -> Path:
    """Where the tracking models are looked for: :func:`asset_folder`, or, when neither the
    preference nor ``$GAGAVATAR_ASSETS`` names a folder and the models are not there, the command
    line's user data folder if it holds them (as for :func:`asset_paths`)."""
    from ..engine.assets import ENV_VAR, TRACKING_MODELS, user_data_dir
    folder = asset_folder(prefs)
    if prefs.assets_folder or os.environ.get(ENV_VAR) or (folder / TRACKING_MODELS[0]).is_file():
        return folder
    return user_data_dir() if (user_data_dir() / TRACKING_MODELS[0]).is_file() else folder


def asset_paths(prefs) -> tuple[Path, Path]:
    """``(GAGAvatar.pt, FLAME)`` paths from the preferences: explicit paths, else the files in
    :func:`asset_folder`; when neither the preference nor ``$GAGAVATAR_ASSETS`` names a folder,
    files already downloaded by the command line (``gagavatar assets download``, the engine's
    user data folder) are used too (read only).

    Raises:
        AssetError: a file is missing (the message says where it was looked for and what to do).
    """
    from ..engine.assets import ENV_VAR, user_data_dir
    from ..engine.errors import AssetError
    folder = asset_folder(prefs)
    fallback = None if prefs.assets_folder or os.environ.get(ENV_VAR) else user_data_dir()
    paths = []
    for explicit, name in ((prefs.model_path, MODEL_FILE), (prefs.flame_path, FLAME_FILE)):
        path = Path(bpy.path.abspath(explicit)) if explicit else folder / name
        if not explicit and not path.is_file() and fallback is not None and (fallback / name).is_file():
            path = fallback / name
        if not path.is_file():
            raise AssetError(f"{name} not found at {path}: use Download Assets in the GAGAvatar preferences, "
                             f"or set the asset folder (default: ${ENV_VAR}) to the folder that has it")
        paths.append(path)
    return paths[0], paths[1]


def _key(path: Path) -> str:
    return os.path.realpath(path)


KERNEL_SUBFOLDER = "cache"
"""Where the CPU splatting kernel is built (``extension_path_user(<package>, path="cache")``), unless
``$GAGAVATAR_CACHE_DIR`` names a folder (a render farm's shared one, say)."""


def load_model(path: Path, device: str):
    """The GAGAvatar network at ``path`` on ``device``, cached. Points the engine's CPU splatting
    kernel build at the extension's user folder (the only place the add-on writes to by default)."""
    from ..engine.checkpoints import load_model as load
    from ..engine.splatting import cpu_backend
    if not os.environ.get("GAGAVATAR_CACHE_DIR"):
        cpu_backend.set_cache_dir(bpy.utils.extension_path_user(deps.root_package(), path=KERNEL_SUBFOLDER,
                                                                create=False))
    return cache.get(("model", _key(path), device), lambda: load(path, device=device))


def load_flame(path: Path):
    """The FLAME model at ``path`` (CPU: it builds rigs and fits landmarks), cached."""
    from ..engine.flame import load_flame as load
    return cache.get(("flame", _key(path), "cpu"), lambda: load(path))


def load_avatar(mesh: bpy.types.Mesh, device: str):
    """The engine ``Avatar`` stored in an avatar's Gaussians mesh, on ``device``, cached by the mesh's uid."""
    def read():
        import torch
        from ..engine.avatar import Avatar
        from ..engine.errors import GAGAvatarError
        try:
            arrays = gaussians.read_mesh(mesh)
        except KeyError as err:
            raise GAGAvatarError(f"the Gaussians mesh '{mesh.name}' lacks the attribute {err}: "
                                 "re-create the avatar from its image") from None
        return Avatar({k: torch.from_numpy(v)[None].to(device) for k, v in arrays.items()})
    return cache.get(("avatar", str(mesh.get(gaussians.UID, mesh.name_full)), device), read)
