"""The FLAME head model as GAGAvatar uses it (linear blend skinning through ``smplx.lbs``).

GAGAvatar's FLAME (``core/libs/flame_model/FLAME.py``) differs from smplx's in how it is fed:

* ``shapedirs`` = the first ``n_shape`` identity components and components ``300 .. 300 +
  n_expression`` (the expression space) of the file's ``[5023, 3, 400]`` blend shapes;
* the pose is 6 numbers, global rotation (3) + jaw (3), axis-angle in radians; the neck is always
  zero and the eyes are 6 more numbers, so the full pose is ``[global, neck = 0, jaw, left eye,
  right eye]`` for the joints ``0 root, 1 neck, 2 jaw, 3 left eye, 4 right eye``;
* ``posedirs [5023, 3, 36]`` is used as ``[36, 15069]``: pose feature ``(R_j - I)`` of joints 1..4
  flattened row-major, times that matrix, gives the pose-corrective offsets;
* ``parents = kintree_table[0]`` with ``parents[0] = -1``;
* the skinned vertices are multiplied by ``scale`` (5.0): the result is in GAGAvatar's world units
  (1 unit = 0.2 m, head at the origin, ``+Y`` up, face toward ``+Z``).

The skinning is ``smplx.lbs.lbs``, whose Rodrigues formula adds 1e-8 to every component of the
axis-angle before taking its norm, exactly as the official copy does.

Files read by :func:`load_flame` (the kind is found from the content, not the extension):

* ``FLAME_with_eye.pt`` (GAGAvatar's asset; ``torch.load(weights_only=True)``):
  ``{'flame_model': {v_template, f, shapedirs, posedirs, J_regressor, kintree_table, weights},
  'lmk_embeddings': {..., full_lmk_faces_idx_with_eye, full_lmk_bary_coords_with_eye,
  dynamic_lmk_faces_idx, dynamic_lmk_bary_coords}}``;
* FLAME 2017/2020/2023 ``generic_model.pkl`` (a Python 2 pickle with chumpy arrays and a scipy
  sparse ``J_regressor``, read by :mod:`.safe_pickle`, so neither chumpy nor scipy is needed and
  nothing in the file runs); it has no landmark embedding: pass ``landmarks_path``;
* ``.npz`` with the keys of the ``.pkl``.

Landmarks are GAGAvatar's 70 points: the 68 iBUG face landmarks (0-16 jaw contour, 17-26
brows, 27-35 nose, 36-47 eyes, 48-67 mouth) then the two eye centres (68 left, 69 right),
barycentric points on mesh triangles from ``full_lmk_*_with_eye``.
"""
from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from smplx.lbs import lbs, vertices2landmarks
from torch import Tensor, nn

from .checkpoints import load_torch_file
from .errors import AssetError
from .safe_load import file_head
from .safe_pickle import PickledObject, load_npy, load_npz, safe_load

__all__ = ["FLAME", "load_flame", "N_VERTICES", "N_JOINTS", "N_LANDMARKS", "N_CONTOUR", "CONTOUR_MAX_DEG"]

N_VERTICES = 5023
"""Vertices of the FLAME mesh."""
N_JOINTS = 5
"""Joints: 0 root, 1 neck, 2 jaw, 3 left eye, 4 right eye."""
N_LANDMARKS = 70
"""68 iBUG landmarks + 2 eye centres."""
N_CONTOUR = 17
"""The jaw-contour landmarks (0-16) that the dynamic embedding replaces."""
CONTOUR_MAX_DEG = 39
"""The dynamic contour table has rows for yaw -39..39 degrees (79 rows)."""

SHAPE_SPACE = 300
EXPRESSION_SPACE = 100
FLAME_REMEDY = ("pass FLAME_with_eye.pt (`gagavatar assets download --accept-license`) or FLAME's "
                "generic_model.pkl from https://flame.is.tue.mpg.de")
LANDMARK_REMEDY = "pass landmarks_path=FLAME_with_eye.pt (its 70-point embedding fits every FLAME 2020 mesh)"

_MODEL_KEYS = ("v_template", "f", "shapedirs", "posedirs", "J_regressor", "kintree_table", "weights")
_LANDMARK_KEYS = ("full_lmk_faces_idx_with_eye", "full_lmk_bary_coords_with_eye")
_CONTOUR_KEYS = ("dynamic_lmk_faces_idx", "dynamic_lmk_bary_coords")
_SHOWN = 3  # problems named in one message

PathLike = Union[str, os.PathLike]
ArrayLike = Union[Tensor, np.ndarray]


def _tensor(value: ArrayLike, dtype: torch.dtype) -> Tensor:
    """A fresh tensor (own memory, never a view of a memory-mapped file) of ``dtype``."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.asarray(value, dtype=np.int64 if dtype == torch.long else np.float32))
    return value.to(dtype=dtype).clone()


def contour_rows(yaw: Tensor) -> Tensor:
    """Row of the dynamic contour table for each head yaw (radians, ``[B]``) -> LongTensor ``[B]``.

    As FLAME's reference (smplx, DECA): ``d = round(min(-degrees(yaw), 39))``; rows 0..39 are
    ``d = 0..39``, rows 40..78 are ``d = -1..-39``, and ``d < -39`` uses row 78.
    """
    d = torch.round(torch.clamp(-torch.rad2deg(yaw), max=CONTOUR_MAX_DEG)).long()
    return torch.where(d >= 0, d, torch.where(d < -CONTOUR_MAX_DEG, 2 * CONTOUR_MAX_DEG, CONTOUR_MAX_DEG - d))


class FLAME(nn.Module):
    """FLAME with GAGAvatar's parameterisation; outputs are in world units (x ``scale``).

    Built by :func:`load_flame`; the constructor takes the arrays in the file layout (tensors or
    numpy arrays, already checked):

    Args:
        v_template: ``[V, 3]`` template vertices, metres.
        faces: ``[F, 3]`` triangle vertex indices.
        shapedirs: ``[V, 3, >= 300 + n_expression]`` identity (0..299) and expression (300..)
            blend shapes, metres per unit coefficient.
        posedirs: ``[V, 3, 36]`` pose correctives, metres per pose-feature element.
        J_regressor: ``[5, V]`` joint regressor (dense).
        kintree_table: ``[2, 5]``; row 0 holds the parents (the root's entry is ignored).
        weights: ``[V, 5]`` skinning weights.
        landmark_embedding: None, or ``full_lmk_faces_idx_with_eye [70]`` and
            ``full_lmk_bary_coords_with_eye [70, 3]``, optionally with ``dynamic_lmk_faces_idx
            [79, 17]`` and ``dynamic_lmk_bary_coords [79, 17, 3]``.
        n_shape, n_expression: identity and expression components used (at most 300 and 100).
        scale: factor applied after skinning (GAGAvatar: 5.0).
    """

    def __init__(self, v_template: ArrayLike, faces: ArrayLike, shapedirs: ArrayLike, posedirs: ArrayLike,
                 J_regressor: ArrayLike, kintree_table: ArrayLike, weights: ArrayLike,
                 landmark_embedding: Optional[Mapping[str, ArrayLike]] = None,
                 n_shape: int = SHAPE_SPACE, n_expression: int = EXPRESSION_SPACE, scale: float = 5.0) -> None:
        super().__init__()
        if not (1 <= n_shape <= SHAPE_SPACE and 0 <= n_expression <= EXPRESSION_SPACE):
            raise ValueError(f"n_shape must be 1..{SHAPE_SPACE} and n_expression 0..{EXPRESSION_SPACE}, "
                             f"got {n_shape} and {n_expression}")
        self.n_shape = n_shape
        self.n_expression = n_expression
        self.scale = float(scale)
        f32, long = torch.float32, torch.long
        dirs = _tensor(shapedirs, f32)
        posedirs = _tensor(posedirs, f32)
        parents = _tensor(kintree_table, long)[0].clone()
        parents[0] = -1
        self.register_buffer("v_template", _tensor(v_template, f32), persistent=False)
        self.register_buffer("faces_tensor", _tensor(faces, long), persistent=False)
        self.register_buffer("shapedirs", torch.cat(
            [dirs[..., :n_shape], dirs[..., SHAPE_SPACE:SHAPE_SPACE + n_expression]], dim=2), persistent=False)
        self.register_buffer("posedirs", posedirs.reshape(-1, posedirs.shape[-1]).T.contiguous(), persistent=False)
        self.register_buffer("J_regressor", _tensor(J_regressor, f32), persistent=False)
        self.register_buffer("parents", parents, persistent=False)
        self.register_buffer("lbs_weights", _tensor(weights, f32), persistent=False)
        lmk = landmark_embedding or {}
        for name, key, dtype, shape in (
                ("full_lmk_faces_idx", _LANDMARK_KEYS[0], long, (N_LANDMARKS,)),
                ("full_lmk_bary_coords", _LANDMARK_KEYS[1], f32, (N_LANDMARKS, 3)),
                ("dynamic_lmk_faces_idx", _CONTOUR_KEYS[0], long, None),
                ("dynamic_lmk_bary_coords", _CONTOUR_KEYS[1], f32, None)):
            value = _tensor(lmk[key], dtype) if key in lmk else None
            self.register_buffer(name, value.reshape(shape) if value is not None and shape else value,
                                 persistent=False)

    # --- evaluation ---------------------------------------------------------------------------

    def forward(self, shape: Optional[Tensor] = None, expression: Optional[Tensor] = None,
                pose: Optional[Tensor] = None, eyes: Optional[Tensor] = None) -> Tensor:
        """Posed vertices, x ``scale``.

        Args:
            shape: ``[B, n_shape]`` identity coefficients.
            expression: ``[B, n_expression]`` expression coefficients.
            pose: ``[B, 6]`` global rotation (3) + jaw rotation (3), axis-angle, radians.
            eyes: ``[B, 6]`` left-eye + right-eye rotations, axis-angle, radians.
            Missing arguments are zeros; a batch of 1 broadcasts to the others' batch.

        Returns:
            ``[B, V, 3]`` vertices in world units (FLAME metres x ``scale``).
        """
        given = [t for t in (shape, expression, pose, eyes) if t is not None]
        batch = max((t.shape[0] for t in given), default=1)
        shape = self._param(shape, self.n_shape, "shape", batch)
        expression = self._param(expression, self.n_expression, "expression", batch)
        pose = self._param(pose, 6, "pose", batch)
        eyes = self._param(eyes, 6, "eyes", batch)
        full_pose = torch.cat([pose[:, :3], torch.zeros_like(pose[:, :3]), pose[:, 3:], eyes], dim=1)
        template = self.v_template.unsqueeze(0).expand(batch, -1, -1)
        vertices, _ = lbs(torch.cat([shape, expression], dim=1), full_pose, template, self.shapedirs,
                          self.posedirs, self.J_regressor, self.parents, self.lbs_weights)
        return vertices * self.scale

    def _param(self, value: Optional[Tensor], width: int, name: str, batch: int) -> Tensor:
        """``[batch, width]`` float tensor on the model's device (zeros when ``value`` is None)."""
        if value is None:
            return self.v_template.new_zeros(batch, width)
        if value.dim() != 2 or value.shape[1] != width or value.shape[0] not in (1, batch):
            raise ValueError(f"{name} must be [{batch}, {width}] (or [1, {width}]), got {list(value.shape)}")
        return value.to(self.v_template).expand(batch, -1)

    @property
    def faces(self) -> Tensor:
        """``[F, 3]`` LongTensor of triangle vertex indices."""
        return self.faces_tensor

    @property
    def has_landmarks(self) -> bool:
        """Whether :meth:`landmarks` can run (the file, or ``landmarks_path``, had an embedding)."""
        return self.full_lmk_faces_idx is not None

    @staticmethod
    def head_yaw(rotation: Tensor) -> Tensor:
        """Yaw (radians, ``[B]``) of head rotations ``[B, 3, 3]``, as FLAME's contour lookup measures it.

        ``atan2(-R[2, 0], hypot(R[0, 0], R[1, 0]))``: the angle about ``+Y`` (for ``R = Ry(a)`` it
        is ``a``; positive turns the face, which looks down ``+Z``, toward ``+X``, the head's left).
        ``R`` is the rotation of the head relative to the camera's view, in FLAME axes.
        """
        return torch.atan2(-rotation[:, 2, 0], torch.hypot(rotation[:, 0, 0], rotation[:, 1, 0]))

    def landmarks(self, vertices: Tensor, yaw: Optional[Tensor] = None) -> Tensor:
        """The 70 landmarks (68 iBUG + 2 eye centres) on a batch of meshes.

        Args:
            vertices: ``[B, V, 3]`` vertices (any scale: the landmarks come out in the same units).
            yaw: optional ``[B]`` head yaw in radians (see :meth:`head_yaw`). When given, the 17
                jaw-contour landmarks are taken from FLAME's dynamic embedding for that yaw
                (:func:`contour_rows`), i.e. the visible silhouette, as FLAME fitting does;
                otherwise from the static 70-point embedding (what GAGAvatar's tracker fits).

        Returns:
            ``[B, 70, 3]`` landmark positions.

        Raises:
            AssetError: the model was loaded without a landmark embedding, or ``yaw`` was given
                and the embedding has no dynamic contour.
        """
        if not self.has_landmarks:
            raise AssetError(f"this FLAME model has no 70-point landmark embedding: {LANDMARK_REMEDY}")
        batch = vertices.shape[0]
        faces_idx = self.full_lmk_faces_idx.unsqueeze(0).expand(batch, -1)
        bary = self.full_lmk_bary_coords.unsqueeze(0).expand(batch, -1, -1)
        if yaw is not None:
            if self.dynamic_lmk_faces_idx is None:
                raise AssetError(f"this FLAME model's landmark embedding has no dynamic contour: {LANDMARK_REMEDY}")
            rows = contour_rows(yaw.reshape(batch).to(self.full_lmk_bary_coords))
            faces_idx = torch.cat([self.dynamic_lmk_faces_idx[rows], faces_idx[:, N_CONTOUR:]], dim=1)
            bary = torch.cat([self.dynamic_lmk_bary_coords[rows], bary[:, N_CONTOUR:]], dim=1)
        return vertices2landmarks(vertices.contiguous(), self.faces_tensor, faces_idx.contiguous(),
                                  bary.to(vertices.dtype).contiguous())

    # --- rig exports (world units, x scale) -------------------------------------------------------

    def _shaped(self, shape: Optional[Tensor], expression: Optional[Tensor]) -> Tensor:
        """``[V, 3]`` template + identity + expression blend shapes (unscaled)."""
        coeffs = torch.cat([self._param(None if shape is None else shape.reshape(1, -1), self.n_shape, "shape", 1),
                            self._param(None if expression is None else expression.reshape(1, -1),
                                        self.n_expression, "expression", 1)], dim=1)
        return self.v_template + torch.einsum("vck,k->vc", self.shapedirs, coeffs[0])

    def rest_vertices(self, shape: Optional[Tensor] = None) -> Tensor:
        """``[V, 3]`` neutral mesh of an identity: template + identity blend shapes, x ``scale``.

        Args:
            shape: ``[n_shape]`` identity coefficients, or None for the template.
        """
        return self._shaped(shape, None) * self.scale

    @property
    def expression_basis(self) -> Tensor:
        """``[V, 3, n_expression]`` expression blend shapes, world units per unit coefficient.

        ``rest_vertices(shape) + expression_basis @ expression`` is the unposed mesh.
        """
        return self.shapedirs[..., self.n_shape:] * self.scale

    def joints(self, shape: Optional[Tensor] = None, expression: Optional[Tensor] = None) -> Tensor:
        """``[5, 3]`` rest joint positions (root, neck, jaw, left eye, right eye), x ``scale``.

        FLAME regresses the joints from the shaped mesh, expression included, so the exact joints
        of a frame depend (slightly) on its expression: pass it to get them; without it these
        are the joints of the neutral face of ``shape`` (``[n_shape]`` or None).
        """
        return self.J_regressor @ self._shaped(shape, expression) * self.scale

    @property
    def skin_weights(self) -> Tensor:
        """``[V, 5]`` linear-blend-skinning weights (rows sum to 1)."""
        return self.lbs_weights

    @property
    def pose_basis(self) -> Tensor:
        """``[V, 3, 36]`` pose correctives, world units per pose-feature element.

        The pose feature is ``(R_j - I)`` for joints 1..4 (neck, jaw, left eye, right eye), each
        3x3 flattened row-major, concatenated (36 values); the offsets ``pose_basis @ feature`` are
        added to the unposed mesh before skinning.
        """
        n_vertices = self.v_template.shape[0]
        return self.posedirs.T.reshape(n_vertices, 3, -1) * self.scale


# --- loading ----------------------------------------------------------------------------------------

def _read_data(path: Path, remedy: str) -> Any:
    """The content of a FLAME or landmark file, whichever of the supported kinds it is."""
    head = file_head(path, remedy)
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError) as err:
            raise AssetError(f"{path} is truncated or corrupt (incomplete download?): {remedy}") from err
        if any(n.endswith("data.pkl") for n in names):
            return load_torch_file(path, remedy)
        return load_npz(path)
    if head.startswith(b"\x93NUMPY"):
        array = load_npy(path)
        return array[()] if array.dtype == object and array.ndim == 0 else array
    return safe_load(path)


def _split(data: Any, path: Path) -> tuple[Mapping, Optional[Mapping]]:
    """(model entries, landmark entries or None) of a file's content."""
    if isinstance(data, Mapping) and "model" in data and ("meta_cfg" in data or "format" in data):
        raise AssetError(f"{path} is a GAGAvatar checkpoint, not a FLAME model: {FLAME_REMEDY}")
    if isinstance(data, Mapping) and isinstance(data.get("flame_model"), Mapping):
        lmk = data.get("lmk_embeddings")
        return data["flame_model"], lmk if isinstance(lmk, Mapping) else None
    if isinstance(data, Mapping) and "v_template" in data:
        return data, data
    raise AssetError(f"{path} is not a FLAME model (no 'flame_model' or 'v_template' entry): {FLAME_REMEDY}")


def _array(entries: Mapping, key: str, problems: list[str]) -> Optional[ArrayLike]:
    """``entries[key]`` as a tensor or numeric numpy array, or None after noting the problem."""
    if key not in entries:
        problems.append(f"no '{key}'")
        return None
    value = entries[key]
    if isinstance(value, PickledObject):
        problems.append(f"'{key}' is a {'.'.join(value.origin)} this loader cannot evaluate")
    elif isinstance(value, Tensor) and value.layout == torch.strided:
        return value
    elif isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    else:
        problems.append(f"'{key}' is a {type(value).__name__}, not an array")
    return None


def _raise(problems: list[str], path: Path, what: str, remedy: str) -> None:
    if problems:
        more = f", ... {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise AssetError(f"{path} is not a valid {what} ({', '.join(problems[:_SHOWN])}{more}): {remedy}")


def _model_arrays(entries: Mapping, path: Path, n_expression: int) -> dict[str, ArrayLike]:
    """The checked model arrays, keyed as :class:`FLAME`'s constructor arguments."""
    problems: list[str] = []
    arrays = {key: _array(entries, key, problems) for key in _MODEL_KEYS}
    _raise(problems, path, "FLAME model", FLAME_REMEDY)
    n_vertices = arrays["v_template"].shape[0]
    n_faces = arrays["f"].shape[0]
    expected = {
        "v_template": (n_vertices, 3), "f": (n_faces, 3), "J_regressor": (N_JOINTS, n_vertices),
        "kintree_table": (2, N_JOINTS), "weights": (n_vertices, N_JOINTS),
        "posedirs": (n_vertices, 3, 9 * (N_JOINTS - 1)),
    }
    for key, shape in expected.items():
        if tuple(arrays[key].shape) != shape:
            problems.append(f"'{key}' is {list(arrays[key].shape)}, expected {list(shape)}")
    dirs = tuple(arrays["shapedirs"].shape)
    if len(dirs) != 3 or dirs[:2] != (n_vertices, 3) or dirs[2] < SHAPE_SPACE + n_expression:
        problems.append(f"'shapedirs' is {list(dirs)}, expected [{n_vertices}, 3, {SHAPE_SPACE + EXPRESSION_SPACE}]")
    faces = arrays["f"]
    if not problems and n_faces and (int(faces.min()) < 0 or int(faces.max()) >= n_vertices):
        problems.append("'f' indexes missing vertices")
    _raise(problems, path, "FLAME model", FLAME_REMEDY)
    return {"v_template": arrays["v_template"], "faces": faces, "shapedirs": arrays["shapedirs"],
            "posedirs": arrays["posedirs"], "J_regressor": arrays["J_regressor"],
            "kintree_table": arrays["kintree_table"], "weights": arrays["weights"]}


def _landmark_arrays(entries: Optional[Mapping], path: Path, n_faces: int) -> Optional[dict[str, ArrayLike]]:
    """The checked 70-point embedding (+ dynamic contour if present), or None if there is none."""
    if entries is None or not all(k in entries for k in _LANDMARK_KEYS):
        return None
    problems: list[str] = []
    keys = _LANDMARK_KEYS + (_CONTOUR_KEYS if all(k in entries for k in _CONTOUR_KEYS) else ())
    arrays = {key: _array(entries, key, problems) for key in keys}
    _raise(problems, path, "FLAME landmark embedding", LANDMARK_REMEDY)
    n_rows = 2 * CONTOUR_MAX_DEG + 1
    expected = {_LANDMARK_KEYS[0]: (N_LANDMARKS,), _LANDMARK_KEYS[1]: (N_LANDMARKS, 3),
                _CONTOUR_KEYS[0]: (n_rows, N_CONTOUR), _CONTOUR_KEYS[1]: (n_rows, N_CONTOUR, 3)}
    for key, value in arrays.items():
        if value.ndim < len(expected[key]) or tuple(value.shape[-len(expected[key]):]) != expected[key] \
                or math.prod(value.shape) != math.prod(expected[key]):
            problems.append(f"'{key}' is {list(value.shape)}, expected {list(expected[key])}")
    for key in (k for k in keys if "faces_idx" in k):
        if not problems and (int(arrays[key].min()) < 0 or int(arrays[key].max()) >= n_faces):
            problems.append(f"'{key}' indexes missing faces (an embedding for another mesh?)")
    _raise(problems, path, "FLAME landmark embedding", LANDMARK_REMEDY)
    return arrays


def load_flame(path: PathLike, device: Union[str, torch.device] = "cpu", n_shape: int = SHAPE_SPACE,
               n_expression: int = EXPRESSION_SPACE, scale: float = 5.0,
               landmarks_path: Optional[PathLike] = None) -> FLAME:
    """Load a FLAME model: ``FLAME_with_eye.pt``, FLAME's ``generic_model.pkl`` or a ``.npz`` of it.

    Args:
        path: the model file (kind detected from its content; see the module docstring).
        device: where the model's buffers go.
        n_shape, n_expression: identity / expression components to use (GAGAvatar: 300 / 100).
        scale: factor applied to the skinned vertices (GAGAvatar: 5.0).
        landmarks_path: a file with the 70-point landmark embedding (``full_lmk_faces_idx_with_eye``,
            ``full_lmk_bary_coords_with_eye``, optionally ``dynamic_lmk_*``) to use instead of the
            model file's: ``FLAME_with_eye.pt`` itself, or a ``.pt``/``.pkl``/``.npy``/``.npz``
            holding those keys (at the top level or under ``lmk_embeddings``).

    Returns:
        :class:`FLAME` in eval mode. Without any embedding it loads, but :meth:`FLAME.landmarks`
        raises.

    Raises:
        AssetError: a file is missing, unreadable, truncated, of the wrong kind (e.g. a GAGAvatar
            checkpoint) or lacks entries / has wrong shapes.
        UnsafeFileError: a file contains pickled code (refused, nothing in it was run).
    """
    path = Path(path)
    model_entries, lmk_entries = _split(_read_data(path, FLAME_REMEDY), path)
    arrays = _model_arrays(model_entries, path, n_expression)
    n_faces = arrays["faces"].shape[0]
    landmarks = _landmark_arrays(lmk_entries, path, n_faces)
    if landmarks_path is not None:
        lmk_path = Path(landmarks_path)
        data = _read_data(lmk_path, LANDMARK_REMEDY)
        if isinstance(data, Mapping) and isinstance(data.get("lmk_embeddings"), Mapping):
            data = data["lmk_embeddings"]
        landmarks = _landmark_arrays(data if isinstance(data, Mapping) else None, lmk_path, n_faces)
        if landmarks is None:
            raise AssetError(f"{lmk_path} has no {' / '.join(_LANDMARK_KEYS)} (the 70-point embedding GAGAvatar "
                             f"uses): {LANDMARK_REMEDY}")
    flame = FLAME(**arrays, landmark_embedding=landmarks, n_shape=n_shape, n_expression=n_expression, scale=scale)
    return flame.to(device).eval()
