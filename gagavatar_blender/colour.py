"""The file's working colour space: the network's sRGB, decoded to linear Rec.709, converted into it.

Blender 4.2-4.5: scene-linear is always linear Rec.709 (Blender's default OCIO config). Blender 5.0+:
each file has a working space (``bpy.data.colorspace.working_space``, changed with
``bpy.ops.wm.set_working_color_space``): Linear Rec.709, Linear Rec.2020 or ACEScg.

The matrices take linear Rec.709 (D65) RGB to the working space's RGB. Computed from the primaries
and white points (ITU-R BT.709, ITU-R BT.2020, ACES AP1 with the ACES white point of SMPTE ST
2065-1 / Academy S-2014-004) in double precision; the Rec.2020 one is ITU-R BT.2087-0's; ACEScg uses
Bradford chromatic adaptation D65 -> ACES white, as Blender's config does (OCIO builtin
``UTILITY - ACES-AP1_to_CIE-XYZ-D65_BFD``).
"""
from __future__ import annotations

import numpy as np

import bpy

REC709_TO_REC2020 = np.array([
    [0.6274038959, 0.3292830384, 0.0433130657],
    [0.0690972894, 0.9195403951, 0.0113623156],
    [0.0163914389, 0.0880133079, 0.8955952532]])
REC709_TO_ACESCG = np.array([
    [0.6130974024, 0.3395231462, 0.0473794514],
    [0.0701937225, 0.9163538791, 0.0134523985],
    [0.0206155929, 0.1095697729, 0.8698146342]])

# interop id (OCIO colour interop forum) -> name in Blender's config -> matrix (None: no conversion)
SPACES = {
    "lin_rec709_scene": ("Linear Rec.709", None),
    "lin_rec2020_scene": ("Linear Rec.2020", REC709_TO_REC2020),
    "lin_ap1_scene": ("ACEScg", REC709_TO_ACESCG),
}


def working_space() -> tuple[str, str]:
    """``(name, interop id)`` of the open file's working colour space."""
    settings = getattr(bpy.data, "colorspace", None)  # Blender 5.0+; 4.2-4.5: always linear Rec.709
    if settings is None:
        return "Linear Rec.709", "lin_rec709_scene"
    return settings.working_space, settings.working_space_interop_id


def conversion(name: str, interop_id: str) -> tuple[np.ndarray | None, str]:
    """``(matrix or None, warning)`` from linear Rec.709 to the working space ``name`` / ``interop_id``.

    An unknown space (a custom OCIO config) gets no conversion and a one-line warning naming it.
    """
    for known_id, (known_name, matrix) in SPACES.items():
        if interop_id == known_id or name == known_name:
            return matrix, ""
    known = ", ".join(known_name for known_name, _ in SPACES.values())
    return None, (f"GAGAvatar: the file's working colour space '{name}' (interop id '{interop_id or 'none'}') is not "
                  f"one GAGAvatar converts to ({known}): its colours are linear Rec.709, shown as if they were "
                  f"'{name}'; set Color Management > Working Space to one of these")


def file_conversion() -> tuple[np.ndarray | None, str]:
    """:func:`conversion` for the open file's working space."""
    return conversion(*working_space())


def to_working_space(rgb: np.ndarray, matrix: np.ndarray | None) -> np.ndarray:
    """Linear Rec.709 ``rgb [..., 3]`` (premultiplied or not: the map is linear) in the working space."""
    if matrix is None:
        return rgb
    return (rgb @ matrix.T.astype(rgb.dtype)).astype(rgb.dtype, copy=False)
