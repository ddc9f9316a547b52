"""The engine's Python requirements inside Blender, checked by installed version, and pip's install plan.

bpy-free (testable in any Python). One requirement set per Python minor version that Blender
embeds: 3.11 (Blender 4.2 LTS, 4.5 LTS, 5.0) and 3.13 (5.1, 5.2 LTS, 5.3). Pins are where a pin
matters: ``smplx`` (its ``lbs`` is part of our FLAME), ``mediapipe`` (the tracker's runtime: one
release of its Tasks API on both Pythons, whose wheel is ``py3-none``; the models are assets, see
``engine/assets.py``) and ``opencv-contrib-python`` (the build mediapipe needs, never beside
``opencv-python``). torch's floor differs: 2.6 is the first release with Python 3.13 wheels.

Blender bundles numpy (1.26 up to 5.0, 2.x from 5.1) and a few other packages: they are
*checked* (the engine needs numpy >= 1.26) but never installed into the add-on's private
site-packages, so Blender keeps using its own. :func:`install_plan` enforces that on pip's
resolution.

Versions are compared by their release numbers (``2.13.0+cpu`` is 2.13.0); the specifier
operators are ``==``, ``!=``, ``>=``, ``<=``, ``>``, ``<`` and ``~=``.
"""
from __future__ import annotations

import importlib.metadata
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Python (major, minor) -> pip requirements installed by "Install Dependencies".
REQUIREMENTS: dict[tuple[int, int], tuple[str, ...]] = {
    (3, 11): ("torch>=2.4", "smplx==0.1.28", "mediapipe==1.2.3", "opencv-contrib-python==4.11.0.86",
              "pillow>=10"),
    (3, 13): ("torch>=2.6", "smplx==0.1.28", "mediapipe==1.2.3", "opencv-contrib-python==4.11.0.86",
              "pillow>=11"),
}

#: Requirements that Blender itself provides: checked, never installed by the add-on.
BUNDLED: tuple[str, ...] = ("numpy>=1.26",)

#: Packaging tools that Blender's Python has and the engine never imports, though a dependency
#: may declare a newer one (torch >= 2.9 asks for setuptools >= 77, used only by its C++
#: extension builder): left out of the install plan, so Blender's own copy stays.
TOOLING: frozenset[str] = frozenset({"pip", "setuptools", "wheel"})

_SPEC = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*)$")
_CLAUSE = re.compile(r"^\s*(==|!=|>=|<=|~=|>|<)\s*([0-9][0-9A-Za-z.+!*-]*)\s*$")


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name (``Opencv_Contrib.Python`` -> ``opencv-contrib-python``)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release(version: str) -> tuple[int, ...]:
    """The release numbers of a version string: ``"2.13.0+cpu"`` -> ``(2, 13, 0)``, ``"1.26.4"`` -> ``(1, 26, 4)``."""
    version = version.split("+", 1)[0].split("!", 1)[-1]
    numbers = []
    for part in version.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        numbers.append(int(digits.group()))
        if digits.end() != len(part):  # a pre/post-release suffix ends the release part
            break
    return tuple(numbers)


def _cmp(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = max(len(a), len(b))
    a, b = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (a > b) - (a < b)


def satisfies(version: str, specifier: str) -> bool:
    """True when ``version`` meets every comma-separated clause of ``specifier`` (empty: any version)."""
    have = release(version)
    for clause in filter(None, (c.strip() for c in specifier.split(","))):
        match = _CLAUSE.match(clause)
        if match is None:
            raise ValueError(f"unsupported version specifier '{clause}'")
        op, text = match.groups()
        if text.endswith(".*") and op in ("==", "!="):
            want = release(text[:-2])
            same = have[:len(want)] == want
            if same != (op == "=="):
                return False
            continue
        want, c = release(text), _cmp(have, release(text))
        ok = {"==": c == 0, "!=": c != 0, ">=": c >= 0, "<=": c <= 0, ">": c > 0, "<": c < 0,
              "~=": c >= 0 and have[:len(want) - 1] == want[:len(want) - 1]}[op]
        if not ok:
            return False
    return True


def split(requirement: str) -> tuple[str, str]:
    """``"torch>=2.4"`` -> ``("torch", ">=2.4")``."""
    match = _SPEC.match(requirement)
    if match is None:
        raise ValueError(f"not a requirement: '{requirement}'")
    return match.group(1), match.group(2).strip()


def for_python(version: Sequence[int] = sys.version_info) -> tuple[str, ...]:
    """The requirement set for a Python version: the newest set made for it or an older Python."""
    key = (version[0], version[1])
    return REQUIREMENTS[max((k for k in REQUIREMENTS if k <= key), default=min(REQUIREMENTS))]


@dataclass(frozen=True)
class Problem:
    """A requirement that the running Python does not meet: ``found`` is None when it is absent."""

    requirement: str
    found: str | None

    @property
    def name(self) -> str:
        return split(self.requirement)[0]

    def __str__(self) -> str:
        return self.name if self.found is None else f"{self.name} {self.found} (needs {split(self.requirement)[1]})"


def installed(path: Iterable[str] | None = None) -> dict[str, str]:
    """Canonical name -> version of the distributions on ``path`` (default ``sys.path``); the first
    one found wins, as for imports."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions(path=list(sys.path if path is None else path)):
        found.setdefault(canonical(dist.metadata["Name"] or ""), dist.version)
    return found


def check(requirements: Iterable[str], path: Iterable[str] | None = None) -> list[Problem]:
    """The requirements not met by the distributions installed on ``path`` (default ``sys.path``)."""
    versions = installed(path)
    problems = []
    for requirement in requirements:
        name, specifier = split(requirement)
        found = versions.get(canonical(name))
        if found is None or not satisfies(found, specifier):
            problems.append(Problem(requirement, found))
    return problems


def install_plan(report: str | dict, bundled: Iterable[str]) -> list[str]:
    """``name==version`` pins to install, from the JSON of ``pip install --dry-run --report``.

    pip resolved against what the Python already has (Blender's bundled packages and the private
    site-packages), so the report lists only what is missing, less :data:`TOOLING`. ``bundled`` names the distributions
    Blender provides: if pip wants one of them (a requirement needs another version than
    Blender's), the plan is refused with a one-line ``RuntimeError`` instead of shadowing
    Blender's copy.
    """
    data = json.loads(report) if isinstance(report, str) else report
    pins = [f"{item['metadata']['name']}=={item['metadata']['version']}" for item in data.get("install", ())
            if canonical(item["metadata"]["name"]) not in TOOLING]
    own = {canonical(name) for name in bundled}
    clash = [pin for pin in pins if canonical(split(pin)[0]) in own]
    if clash:
        raise RuntimeError(f"the requirements need {', '.join(clash)}, which would replace Blender's own copy: "
                           "use an existing environment made for this Blender instead (preferences)")
    return pins
