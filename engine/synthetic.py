"""Deterministic synthetic assets in the official formats: ``GAGAvatar.pt`` and ``FLAME_with_eye.pt``.

Neither file is a trained model and the head is NOT FLAME: they exist so that everything that
reads the official files (loading, reconstruction, driving, Blender, the tests) runs without the
licensed or unpublished weights. An avatar made with them is a plausible-looking but meaningless
head, never a likeness. ``gagavatar assets synthesize DIR --seed N`` writes both.

**Checkpoint** (:func:`checkpoint_state`): every entry of :func:`~.checkpoints.official_layout`
(597 float32 tensors, in the official order) as ``{'model': state_dict, 'meta_cfg': dict}``, the
layout the published file has. Values are ``mean + std * z`` with ``z`` uniform of unit variance
from PCG64 seeded by ``(seed, crc32(key))``: a key's values never depend on other keys. ``std``
is the usual fan-in scale, ``1/sqrt(fan_in)``, with a few exceptions that keep every
intermediate finite and the final sigmoid unsaturated (see :func:`weight_init`). ``meta_cfg``
carries ``SYNTHETIC = {'SEED': seed, 'NOTE': ...}``, which the official loader ignores and
:func:`~.checkpoints.is_synthetic` reads, so tools can say that an avatar is not a likeness.

**FLAME** (:func:`flame_arrays`): a closed head-shaped surface of 5,023 vertices and 9,976 faces
(latitude rings from the crown down to a 68-vertex neck opening), in metres, ``+Y`` up, face
toward ``+Z``, with smooth random identity (300) and expression (100) blend shapes, pose
correctives, five joints (root, neck, jaw, left eye, right eye) with skinning weights, and a
70-point landmark embedding placed like the iBUG layout on the face side, so that trackers fit it
to real faces with a sane pose. Geometry is computed in float64 and rounded once.
"""
from __future__ import annotations

import math
import os
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .atomic import atomic_write
from .checkpoints import DEFAULT_META_CFG, SYNTHETIC_KEY, model_layout, official_layout

__all__ = ["checkpoint_state", "write_checkpoint", "flame_arrays", "write_flame", "synthesize",
           "weight_init", "NOTICE"]

NOTICE = "synthetic weights, not a trained model: an avatar made with them is not a likeness"

N_VERTICES = 5023
N_FACES = 9976
NECK_VERTICES = 2 * (N_VERTICES - 1) - N_FACES   # a disc-topology mesh: F = 2 (V - 1) - boundary


def _rng(seed: int, name: str) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64([int(seed), zlib.crc32(name.encode("utf-8"))]))


def _unit(seed: int, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform values of mean 0 and variance 1, float64, ``shape``; a pure function of (seed, name)."""
    return (2.0 * _rng(seed, name).random(shape) - 1.0) * math.sqrt(3.0)


# --- the checkpoint --------------------------------------------------------------------------------

def weight_init(key: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of the synthetic values of one state-dict entry.

    Fan-in scaling everywhere, except: normalisation gains and StyleGAN modulation biases around
    1; DINOv2's LayerScale at 0.1; transposed convolutions scaled by their input channels (their
    kernels do not overlap); the SFT condition convs and ToRGB layers scaled down (x0.1, x0.5) and
    the SFT scale biases around 1, because ``features * scale + shift`` with a unit-variance scale
    grows the features level after level until the sigmoid saturates; noise maps, the constant
    input and the FLAME-vertex features ``head_base`` unit variance.
    """
    name = key.rsplit(".", 1)[-1]
    if key.endswith("mask_token"):
        return 0.0, 0.0
    if key.endswith(("pos_embed", "cls_token")):
        return 0.0, 0.02
    if name == "gamma":
        return 0.1, 0.01
    if ".condition_scale." in key and key.endswith(".2.bias"):
        return 1.0, 0.02
    if key.endswith("modulation.bias"):
        return 1.0, 0.02
    if name == "bias":
        return 0.0, 0.02
    if len(shape) == 1 and ".norm" in f".{key}":
        return 1.0, 0.05
    if shape == (1,):                                   # StyleGAN noise strengths
        return 0.1, 0.02
    if ".noises." in key or key.endswith("constant_input.weight") or key == "head_base":
        return 0.0, 1.0
    if key in _TRANSPOSED_CONVS:                        # [in, out, k, k], stride = k
        return 0.0, 1.0 / math.sqrt(shape[0])
    if len(shape) == 5:                                 # ModulatedConv2d [1, out, in, k, k]
        gain = 0.5 if ".to_rgb" in key else 1.0
        return 0.0, gain / math.sqrt(math.prod(shape[2:]))
    if len(shape) >= 2:
        gain = 0.1 if ".condition_" in key and key.endswith(".2.weight") else 1.0
        return 0.0, gain / math.sqrt(math.prod(shape[1:]))
    raise ValueError(f"no synthetic rule for {key} {list(shape)}")


#: per-channel means of the lifted Gaussians' output biases (``[41]``: 32 colours, opacity, 3 scales,
#: 4 rotations, lifting distance): faint (opacity about sigmoid(-2) = 0.12) and lifted only about
#: sigmoid(-4) = 0.02 units off the points plane through the head's centre, so that the face's
#: FLAME-vertex Gaussians, which expressions move, lie in front of them and stay visible, as a
#: trained model's face does (random lifting distances put a plane of Gaussians before the face).
_LIFTED_BIAS_MEANS = {32: -2.0, 40: -4.0}
_LIFTED_BIASES = frozenset({"gs_generator_l0.gaussian_conv.6.bias", "gs_generator_l1.gaussian_conv.6.bias"})

#: the weights of transposed convolutions (DINOBase's first two resize layers).
_TRANSPOSED_CONVS = frozenset({"base_model.resize_layers.0.weight", "base_model.resize_layers.1.weight"})


def checkpoint_state(seed: int = 0, perceptual: bool = True) -> "OrderedDict[str, torch.Tensor]":
    """The synthetic state dict: every official key (``percep_loss.*`` only with ``perceptual``) -> float32."""
    layout = official_layout() if perceptual else dict(model_layout())
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, shape in layout.items():
        mean, std = weight_init(key, shape)
        values = mean + std * _unit(seed, key, shape) if std else np.full(shape, mean)
        if key in _LIFTED_BIASES:
            for channel, channel_mean in _LIFTED_BIAS_MEANS.items():
                values[channel] += channel_mean - mean
        state[key] = torch.from_numpy(values.astype(np.float32))
    state._metadata = OrderedDict()                     # what torch's state_dict() carries
    for key in state:
        parts = key.split(".")[:-1]
        for depth in range(len(parts) + 1):
            state._metadata.setdefault(".".join(parts[:depth]), {"version": 1})
    return state


def meta_cfg(seed: int) -> dict[str, Any]:
    """The official ``meta_cfg`` entries inference reads, plus the :data:`SYNTHETIC_KEY` marker."""
    cfg = {k: dict(v) for k, v in DEFAULT_META_CFG.items()}
    cfg[SYNTHETIC_KEY] = {"SEED": int(seed), "NOTE": NOTICE}
    return cfg


def write_checkpoint(path: str | os.PathLike, seed: int = 0, perceptual: bool = True) -> Path:
    """Write a synthetic ``GAGAvatar.pt`` (about 750 MB, 680 MB without ``perceptual``) atomically."""
    path = Path(path)
    data = {"model": checkpoint_state(seed, perceptual), "meta_cfg": meta_cfg(seed)}
    return atomic_write(path, lambda f: torch.save(data, f))


# --- FLAME -----------------------------------------------------------------------------------------

_CENTRE = np.array([0.0, 0.01, -0.01])      # metres
_SEMI_AXES = np.array([0.078, 0.115, 0.098])
_CROWN_TO_NECK = 0.78 * math.pi             # polar angle of the neck opening
_N_RINGS = 60


def _ring_sizes() -> list[int]:
    """Vertices per latitude ring (crown excluded); the last ring is the neck opening."""
    polar = [_CROWN_TO_NECK * (r + 1) / _N_RINGS for r in range(_N_RINGS - 1)]
    budget = N_VERTICES - 1 - NECK_VERTICES
    raw = np.array([math.sin(t) for t in polar]) * budget / sum(math.sin(t) for t in polar)
    sizes = np.maximum(np.floor(raw).astype(int), 5)
    for r in np.argsort(sizes - raw)[: budget - sizes.sum()]:   # largest remainders first
        sizes[r] += 1
    return [int(s) for s in sizes] + [NECK_VERTICES]


def _sphere() -> tuple[np.ndarray, np.ndarray]:
    """Unit directions ``[5023, 3]`` (crown first, ring by ring) and faces ``[9976, 3]`` (any winding)."""
    sizes = _ring_sizes()
    dirs = [np.array([[0.0, 1.0, 0.0]])]
    starts, start = [], 1
    for r, n in enumerate(sizes):
        polar = _CROWN_TO_NECK * (r + 1) / _N_RINGS
        azimuth = 2.0 * math.pi * (np.arange(n) + 0.5 * (r % 2)) / n
        dirs.append(np.stack([math.sin(polar) * np.sin(azimuth), np.full(n, math.cos(polar)),
                              math.sin(polar) * np.cos(azimuth)], -1))
        starts.append(start)
        start += n
    faces = [(0, starts[0] + j, starts[0] + (j + 1) % sizes[0]) for j in range(sizes[0])]
    for r in range(len(sizes) - 1):                     # zip two rings together by azimuth
        a, na, b, nb = starts[r], sizes[r], starts[r + 1], sizes[r + 1]
        pos_a = (np.arange(na + 1) + 0.5 * (r % 2)) / na
        pos_b = (np.arange(nb + 1) + 0.5 * ((r + 1) % 2)) / nb
        i = j = 0
        while i < na or j < nb:
            if j == nb or (i < na and pos_a[i + 1] <= pos_b[j + 1]):
                faces.append((a + i % na, b + j % nb, a + (i + 1) % na))
                i += 1
            else:
                faces.append((a + i % na, b + j % nb, b + (j + 1) % nb))
                j += 1
    return np.concatenate(dirs), np.array(faces, dtype=np.int64)


def _basis(dirs: np.ndarray, degree: int = 4) -> np.ndarray:
    """Smooth functions on the sphere: the monomials ``x^a y^b z^c``, ``a + b + c <= degree``, ``[V, K]``."""
    x, y, z = dirs.T
    return np.stack([x ** a * y ** b * z ** c for a in range(degree + 1) for b in range(degree + 1 - a)
                     for c in range(degree + 1 - a - b)], -1)


def _direction(azimuth: np.ndarray, elevation: np.ndarray) -> np.ndarray:
    """Unit directions for azimuth (from ``+Z`` toward ``+X``) and elevation (toward ``+Y``), radians."""
    return np.stack([np.sin(azimuth) * np.cos(elevation), np.sin(elevation),
                     np.cos(azimuth) * np.cos(elevation)], -1)


def _face_layout() -> np.ndarray:
    """The 70 landmarks as (azimuth, elevation) radians on the head, iBUG order then the eye centres.

    Index 0 and the eye 36-41 lie on the subject's right (``-X``), which a camera facing the
    subject sees on the image's left, as iBUG numbers them.
    """
    t = np.arange(17) / 16.0
    jaw = np.stack([-1.25 * np.cos(np.pi * t), 0.3 - 1.07 * np.sin(np.pi * t)], -1)
    brow = np.stack([np.linspace(-0.75, -0.18, 5), 0.5 + 0.05 * np.sin(np.linspace(0, np.pi, 5))], -1)
    bridge = np.stack([np.zeros(4), np.linspace(0.32, 0.0, 4)], -1)
    nostrils = np.stack([np.linspace(-0.22, 0.22, 5), -0.08 - 0.03 * np.cos(np.linspace(-1.2, 1.2, 5))], -1)

    def eye(cx, outer_first):
        a = np.linspace(0, 2 * np.pi, 7)[:6]
        xs, ys = -0.17 * np.cos(a), 0.05 * np.sin(a)             # outer corner, top, inner, bottom
        return np.stack([cx + (xs if outer_first else -xs), 0.3 + ys], -1)
    right_eye = eye(-0.42, True)
    left_eye = eye(0.42, False)[[3, 4, 5, 0, 1, 2]]              # inner corner first, as iBUG 42
    outer = np.linspace(np.pi, -np.pi, 13)[:12]                   # 48 right corner, over the top
    mouth_out = np.stack([0.42 * np.cos(outer), -0.38 + 0.11 * np.sin(outer)], -1)
    inner = np.linspace(np.pi, -np.pi, 9)[:8]
    mouth_in = np.stack([0.3 * np.cos(inner), -0.38 + 0.04 * np.sin(inner)], -1)
    centres = np.stack([right_eye.mean(0), left_eye.mean(0)])
    xy = np.concatenate([jaw, brow, brow[::-1] * [-1, 1], bridge, nostrils, right_eye, left_eye,
                         mouth_out, mouth_in, centres])
    return np.stack([0.62 * xy[:, 0], 0.93 * xy[:, 1]], -1)


def _embed(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(face index ``[P]``, barycentric ``[P, 3]``) of the surface points nearest ``points [P, 3]``."""
    tri = vertices[faces]                                             # [F, 3, 3]
    nearest = np.argmin(((tri.mean(1)[None] - points[:, None]) ** 2).sum(-1), 1)
    a, b, c = (tri[nearest, k] for k in range(3))
    e1, e2, d = b - a, c - a, points - a
    g = np.stack([np.stack([(e1 * e1).sum(-1), (e1 * e2).sum(-1)], -1),
                  np.stack([(e1 * e2).sum(-1), (e2 * e2).sum(-1)], -1)], -2)
    uv = np.linalg.solve(g, np.stack([(d * e1).sum(-1), (d * e2).sum(-1)], -1)[..., None])[..., 0]
    bary = np.clip(np.concatenate([1.0 - uv.sum(-1, keepdims=True), uv], -1), 0.0, None)
    return nearest, bary / bary.sum(-1, keepdims=True)


def flame_arrays(seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """The synthetic FLAME file's content, ``{'flame_model': {...}, 'lmk_embeddings': {...}}``, numpy.

    ``flame_model``: ``v_template [5023, 3]`` metres, ``f [9976, 3]`` int64 (outward winding),
    ``shapedirs [5023, 3, 400]`` (300 identity then 100 expression, metres per unit coefficient),
    ``posedirs [5023, 3, 36]``, ``J_regressor [5, 5023]`` (rows sum to 1), ``kintree_table [2, 5]``,
    ``weights [5023, 5]`` (rows sum to 1). ``lmk_embeddings``: ``full_lmk_faces_idx_with_eye [1, 70]``,
    ``full_lmk_bary_coords_with_eye [1, 70, 3]``, ``static_lmk_* [51]``/``[51, 3]`` (landmarks
    17-67), ``dynamic_lmk_faces_idx [79, 17]``, ``dynamic_lmk_bary_coords [79, 17, 3]`` (the jaw
    contour for head yaw 0..39 then -1..-39 degrees).
    """
    dirs, faces = _sphere()
    basis = _basis(dirs)
    nose = np.exp(-((dirs - _direction(np.array(0.0), np.array(-0.05))) ** 2).sum(-1) / 0.015)
    chin_taper = 1.0 - 0.15 * np.clip(-dirs[:, 1], 0.0, None) * np.clip(dirs[:, 2], 0.0, None)
    radius = (1.0 + 0.16 * nose) * chin_taper * (1.0 + 0.015 * basis @ _unit(seed, "template", (basis.shape[1],))
                                                 / math.sqrt(basis.shape[1]))
    vertices = _CENTRE + dirs * _SEMI_AXES * radius[:, None]
    tri = vertices[faces]
    normal = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    inward = ((tri.mean(1) - _CENTRE) * normal).sum(-1) < 0
    faces[inward] = faces[inward][:, ::-1]

    face_side = 1.0 / (1.0 + np.exp(-(dirs[:, 2] - 0.25) / 0.12))
    k = basis.shape[1]

    def fields(name: str, count: int, size: np.ndarray) -> np.ndarray:
        coef = _unit(seed, name, (count, k, 3)) / math.sqrt(k)
        return np.einsum("vk,nkc->vcn", basis, coef) * size
    identity = fields("shapedirs", 300, 0.004 / np.sqrt(1.0 + np.arange(300) / 8.0))
    expression = fields("expressiondirs", 100, 0.003 / np.sqrt(1.0 + np.arange(100) / 8.0)) * face_side[:, None, None]
    posedirs = fields("posedirs", 36, np.full(36, 0.0015))

    layout = _face_layout()
    eye_dirs = _direction(layout[68:, 0], layout[68:, 1])
    mouth_dir = _direction(layout[51, 0], layout[51, 1])
    root = 1.0 / (1.0 + np.exp((dirs[:, 1] + 0.72) / 0.02))      # the neck opening is at y = -0.77
    jaw = (1.0 / (1.0 + np.exp((dirs[:, 1] - mouth_dir[1] + 0.02) / 0.04))) * face_side * (1.0 - root)
    eyes = [(((dirs - d) ** 2).sum(-1) < 0.006).astype(float) for d in eye_dirs]   # 3 left, 4 right
    eyes = eyes[::-1]                                   # joint 3 is the subject's left eye (+X)
    neck = np.clip(1.0 - root - jaw - eyes[0] - eyes[1], 0.0, None)
    weights = np.stack([root, neck, jaw, *eyes], -1)
    weights /= weights.sum(-1, keepdims=True)

    def region(mask: np.ndarray) -> np.ndarray:
        return mask / mask.sum()
    jaw_hinge = (np.abs(dirs[:, 0]) > 0.7) & (dirs[:, 1] > -0.35) & (dirs[:, 1] < -0.1)   # both sides, below the ears
    regressor = np.stack([region(root > 0.5), region((dirs[:, 1] < -0.5) & (dirs[:, 1] > -0.65)),
                          region(jaw_hinge), region(eyes[0]), region(eyes[1])])

    landmarks = _embed_layout(layout, vertices, faces)
    rows = np.concatenate([np.arange(40), -np.arange(1, 40)])       # yaw (degrees) of each contour row
    contour = []
    for yaw in rows:
        shifted = layout[:17].copy()
        shifted[:, 0] = np.clip(shifted[:, 0] - math.radians(yaw), -1.4, 1.4)
        contour.append(_embed_layout(shifted, vertices, faces))
    return {
        "flame_model": {
            "v_template": vertices.astype(np.float32), "f": faces,
            "shapedirs": np.concatenate([identity, expression], -1).astype(np.float32),
            "posedirs": posedirs.astype(np.float32), "J_regressor": regressor.astype(np.float32),
            "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
            "weights": weights.astype(np.float32),
        },
        "lmk_embeddings": {
            "full_lmk_faces_idx_with_eye": landmarks[0][None], "full_lmk_bary_coords_with_eye": landmarks[1][None],
            "static_lmk_faces_idx": landmarks[0][17:68], "static_lmk_bary_coords": landmarks[1][17:68],
            "dynamic_lmk_faces_idx": np.stack([c[0] for c in contour]),
            "dynamic_lmk_bary_coords": np.stack([c[1] for c in contour]),
        },
    }


def _embed_layout(layout: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Embed (azimuth, elevation) points ``[P, 2]`` of the face layout on the mesh: (faces int64, bary float32)."""
    directions = _direction(layout[:, 0], layout[:, 1])
    radius = np.linalg.norm(vertices - _CENTRE, axis=-1).max()
    targets = _CENTRE + directions * radius                 # outside the head, nearest the front surface
    index, bary = _embed(targets, vertices, faces)
    return index.astype(np.int64), bary.astype(np.float32)


def write_flame(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a synthetic ``FLAME_with_eye.pt`` (about 27 MB) atomically."""
    path = Path(path)
    data = {group: {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in entries.items()}
            for group, entries in flame_arrays(seed).items()}
    return atomic_write(path, lambda f: torch.save(data, f))


def synthesize(folder: str | os.PathLike, seed: int = 0) -> list[Path]:
    """Write ``GAGAvatar.pt`` and ``FLAME_with_eye.pt`` into ``folder`` (created if needed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [write_checkpoint(folder / "GAGAvatar.pt", seed), write_flame(folder / "FLAME_with_eye.pt", seed)]
