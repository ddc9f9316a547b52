"""The FLAME rig's driver expressions (:mod:`.rig`), built as strings; no bpy, so it is tested anywhere.

Every expression is a Blender *simple expression*, which Blender evaluates natively (no Python, so
the rig works with auto-run of scripts disabled, and fast): numbers, variable names, ``+ - * /``,
unary minus and parentheses only. None of them calls a function. Blender keeps at most
:data:`MAX_LENGTH` characters of an expression (``ChannelDriver.expression`` is a 256-byte field):
the builders raise rather than hand Blender a string it would cut.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Sequence

MAX_LENGTH = 255
"""Characters Blender keeps of a driver expression."""

QUATERNION = ("w", "x", "y", "z")
"""Variable names of a bone's ``rotation_quaternion[0..3]``, as :data:`R_MINUS_I` reads them."""

R_MINUS_I = (
    "-2*(y*y+z*z)", "2*(x*y-w*z)", "2*(x*z+w*y)",
    "2*(x*y+w*z)", "-2*(x*x+z*z)", "2*(y*z-w*x)",
    "2*(x*z-w*y)", "2*(y*z+w*x)", "-2*(x*x+y*y)",
)
"""Row-major entries of ``R - I``, R the rotation matrix of the unit quaternion (w, x, y, z).

These are FLAME's pose-corrective features of a joint (the ``PoseNN`` shape keys' values) and,
negated, the joint-shift factor ``I - R`` of :func:`joint_shift`. The quaternion must be unit
(Blender's pose quaternions are, when keyed through :func:`.rig.set_pose` or the rotation tools).
"""

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def _names(variables: Sequence[str]) -> Sequence[str]:
    for name in variables:
        if not _NAME.match(name):
            raise ValueError(f"not a driver variable name: {name!r}")
    return variables


def _checked(expression: str) -> str:
    if len(expression) > MAX_LENGTH:
        raise ValueError(f"driver expression of {len(expression)} characters (Blender keeps {MAX_LENGTH}): "
                         f"{expression[:40]}...")
    return expression


def linear_combination(coefficients: Sequence[float], variables: Sequence[str]) -> str:
    """``c0*v0 + c1*v1 + ...``: the dot product of ``coefficients`` with the named variables.

    Each coefficient is written with its sign and 8 significant digits (``%+.8g``, exponent
    notation for tiny ones), without the leading ``+``: ``-0.0022949474*e1+0.0016175592*e2``.

    Raises:
        ValueError: lengths differ, a coefficient is not finite, a bad name, or over :data:`MAX_LENGTH`.
    """
    if len(coefficients) != len(variables) or not variables:
        raise ValueError(f"{len(coefficients)} coefficients for {len(variables)} variables")
    terms = []
    for coefficient, name in zip(coefficients, _names(variables)):
        coefficient = float(coefficient)
        if not math.isfinite(coefficient):
            raise ValueError(f"coefficient of {name} is {coefficient}")
        terms.append(f"{coefficient:+.8g}*{name}")
    return _checked("".join(terms).lstrip("+"))


def total(variables: Sequence[str]) -> str:
    """``(v0+v1+...)``: the sum of the named variables, in parentheses."""
    if not variables:
        raise ValueError("a sum of no variables")
    return _checked("(" + "+".join(_names(variables)) + ")")


def joint_shift(row: int, partial_sums: Sequence[Sequence[str]], translation: Optional[str] = None) -> str:
    """Row ``row`` (0, 1, 2 = x, y, z) of a deform bone's pose location ``(I - R) dJ`` (plus ``t``).

    ``R`` is the rotation of the quaternion variables :data:`QUATERNION` and ``dJ[c]`` the sum of the
    variables ``partial_sums[c]`` (c = 0, 1, 2: the axis's partial sums of the joint's expression
    offset). With ``translation``, that variable (the head root's own location) is added, giving
    ``t-((R-I)[row,0]*dJ[0]+(R-I)[row,1]*dJ[1]+(R-I)[row,2]*dJ[2])``.
    """
    if row not in (0, 1, 2) or len(partial_sums) != 3:
        raise ValueError(f"row {row} of a 3-vector from {len(partial_sums)} axis sums")
    entries = R_MINUS_I[3 * row:3 * row + 3]
    shift = "-(" + "+".join(f"({entry})*{total(names)}" for entry, names in zip(entries, partial_sums)) + ")"
    return _checked("".join(_names([translation])) + shift if translation else shift)
