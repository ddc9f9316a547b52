"""The reconstructed avatar: the static Gaussians of one source image, and their file formats.

An :class:`Avatar` holds ``gaussians``, a dict of ``[B, N, *]`` float32 tensors in the official
order ``[5,023 expression | 296^2 forward-lifted | 296^2 backward-lifted]`` (N = 180,255):

========== ======= ===============================================================
key        width   meaning
========== ======= ===============================================================
xyz        3       world position (FLAME x5 units); expression rows are set per frame
colors     32      splatted features (channels 0-2 RGB-like)
opacities  1       0..1
scales     3       Gaussian standard deviations, world units
rotations  4       quaternion ``w, x, y, z`` (expression rows deliberately unnormalised)
========== ======= ===============================================================

Files: ``.npz`` (``save``/``load``; no pickles) and ``.ply`` export in the 3DGS layout for other
splat viewers (``export_ply``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write, write_npz
from .errors import GAGAvatarError
from .splatting.covariance import covariance_from_scale_rotation

N_EXPRESSION = 5023
"""Expression Gaussians: one per FLAME vertex, first in the Gaussian order."""
GAUSSIAN_KEYS = {"xyz": 3, "colors": 32, "opacities": 1, "scales": 3, "rotations": 4}
_FORMAT = "gagavatar-avatar"
_VERSION = 1


@dataclass
class Avatar:
    """Static Gaussians of a reconstructed head (see the module docstring).

    Attributes:
        gaussians: dict of ``[B, N, *]`` tensors.
        source_transform: ``[B, 3, 4]`` camera of the source image, or None.
        shape: ``[B, 300]`` FLAME identity of the source (drive with it), or None.
        source_vertices: ``[B, 5023, 3]`` FLAME vertices of the source (preview/export), or None.
    """

    gaussians: dict[str, torch.Tensor]
    source_transform: torch.Tensor | None = None
    shape: torch.Tensor | None = None
    source_vertices: torch.Tensor | None = None
    _covariances: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        missing = [k for k in GAUSSIAN_KEYS if k not in self.gaussians]
        if missing:
            raise GAGAvatarError(f"avatar data lacks {', '.join(missing)}: re-create the avatar from its image")
        n = self.gaussians["xyz"].shape[1]
        for k, w in GAUSSIAN_KEYS.items():
            t = self.gaussians[k]
            if t.dim() != 3 or t.shape[1] != n or t.shape[2] != w:
                raise GAGAvatarError(f"avatar data '{k}' has shape {tuple(t.shape)}, expected [B, {n}, {w}]: "
                                     "the file is damaged; re-create the avatar")

    @property
    def num_gaussians(self) -> int:
        return self.gaussians["xyz"].shape[1]

    @property
    def batch_size(self) -> int:
        return self.gaussians["xyz"].shape[0]

    @property
    def device(self) -> torch.device:
        return self.gaussians["xyz"].device

    def to(self, device=None, dtype=None) -> "Avatar":
        """A copy on ``device`` (floating tensors cast to ``dtype`` if given)."""
        def mv(t):
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if dtype is not None and t.is_floating_point() else None)
        return Avatar({k: mv(v) for k, v in self.gaussians.items()}, mv(self.source_transform),
                      mv(self.shape), mv(self.source_vertices))

    def covariances(self) -> torch.Tensor:
        """World-space covariances ``[B, N, 3, 3]`` of every Gaussian, computed once and cached.

        They do not change per frame: the expression Gaussians only move (``xyz``), their scales
        and rotations are fixed. Built from the UNnormalised quaternion as the official kernel does.
        """
        if self._covariances is None:
            g = self.gaussians
            self._covariances = covariance_from_scale_rotation(g["scales"], g["rotations"])
        return self._covariances

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (float32, no pickled objects)."""
        path = Path(path)
        arrays = {k: v.detach().float().cpu().numpy() for k, v in self.gaussians.items() if k in GAUSSIAN_KEYS}
        for name in ("source_transform", "shape", "source_vertices"):
            t = getattr(self, name)
            if t is not None:
                arrays[name] = t.detach().float().cpu().numpy()
        arrays["format"] = np.array(_FORMAT)
        arrays["version"] = np.array(_VERSION)
        atomic_write(path, lambda f: write_npz(f, arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device="cpu") -> "Avatar":
        """Read an avatar ``.npz`` written by :meth:`save` (never unpickles)."""
        path = Path(path)
        if not path.is_file():
            raise GAGAvatarError(f"avatar file not found: {path} (create one with `gagavatar reconstruct IMAGE -o {path.name}`)")
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except ValueError as e:
            raise GAGAvatarError(f"{path} holds pickled objects, which are never loaded: it is not an avatar file") from e
        except Exception as e:  # zipfile.BadZipFile, OSError, EOFError, ...
            raise GAGAvatarError(f"{path} is not a readable avatar .npz ({type(e).__name__}): re-create it") from e
        if str(data.get("format", "")) != _FORMAT:
            raise GAGAvatarError(f"{path} is not a GAGAvatar avatar file: create one with `gagavatar reconstruct`")
        if int(data["version"]) > _VERSION:
            raise GAGAvatarError(f"{path} was written by a newer gagavatar (format {int(data['version'])}): update gagavatar")

        def t(k):
            return torch.from_numpy(data[k]).to(device) if k in data else None
        return cls({k: t(k) for k in GAUSSIAN_KEYS if k in data}, t("source_transform"), t("shape"),
                   t("source_vertices"))

    def export_ply(self, path: str | os.PathLike, index: int = 0) -> Path:
        """Export sample ``index`` as a 3DGS ``.ply`` (binary little-endian) for other splat tools.

        Each Gaussian's official covariance is re-factored into a unit quaternion and log-scales
        (viewers normalise quaternions, which would change the unnormalised expression
        Gaussians), RGB goes to degree-0 SH (``f_dc``), the 29 latent channels to ``f_feat_*``.
        Expression Gaussians sit at ``source_vertices`` (origin if unknown).
        """
        g = {k: v[index].detach().float().cpu() for k, v in self.gaussians.items()}
        xyz = g["xyz"].clone()
        if self.source_vertices is not None:
            xyz[:N_EXPRESSION] = self.source_vertices[index].detach().float().cpu()
        cov = self.covariances()[index].detach().float().cpu().double()
        evals, evecs = torch.linalg.eigh(cov)
        evecs = evecs * torch.where(torch.linalg.det(evecs) < 0, -1.0, 1.0)[:, None, None].double()
        scales = evals.clamp_min(1e-20).sqrt().log().float()
        quats = _matrix_to_quaternion(evecs).float()
        rgb = g["colors"][:, :3].clamp(0, 1)
        sh_c0 = 0.28209479177387814
        opac = g["opacities"][:, 0].clamp(1e-6, 1 - 1e-6)
        cols = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
                "nx": torch.zeros_like(xyz[:, 0]), "ny": torch.zeros_like(xyz[:, 0]), "nz": torch.zeros_like(xyz[:, 0]),
                "f_dc_0": (rgb[:, 0] - 0.5) / sh_c0, "f_dc_1": (rgb[:, 1] - 0.5) / sh_c0, "f_dc_2": (rgb[:, 2] - 0.5) / sh_c0}
        for c in range(3, g["colors"].shape[1]):
            cols[f"f_feat_{c}"] = g["colors"][:, c]
        cols["opacity"] = torch.log(opac / (1 - opac))
        for i in range(3):
            cols[f"scale_{i}"] = scales[:, i]
        for i in range(4):
            cols[f"rot_{i}"] = quats[:, i]
        table = np.stack([v.numpy().astype("<f4") for v in cols.values()], axis=1)
        header = ["ply", "format binary_little_endian 1.0", f"element vertex {table.shape[0]}"]
        header += [f"property float {name}" for name in cols] + ["end_header"]
        path = Path(path)
        atomic_write(path, lambda f: (f.write(("\n".join(header) + "\n").encode("ascii")), f.write(table.tobytes())))
        return path


def _matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[N, 3, 3]`` to unit quaternions ``[N, 4]`` (``w, x, y, z``)."""
    m = R
    t = torch.stack([1 + m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2], 1 + m[:, 0, 0] - m[:, 1, 1] - m[:, 2, 2],
                     1 - m[:, 0, 0] + m[:, 1, 1] - m[:, 2, 2], 1 - m[:, 0, 0] - m[:, 1, 1] + m[:, 2, 2]], -1)
    k = t.argmax(-1)
    q = torch.empty(R.shape[0], 4, dtype=R.dtype)
    s = lambda i: (t[:, i].clamp_min(1e-12).sqrt() * 2)  # noqa: E731
    cands = [
        torch.stack([s(0) / 4, (m[:, 2, 1] - m[:, 1, 2]) / s(0), (m[:, 0, 2] - m[:, 2, 0]) / s(0), (m[:, 1, 0] - m[:, 0, 1]) / s(0)], -1),
        torch.stack([(m[:, 2, 1] - m[:, 1, 2]) / s(1), s(1) / 4, (m[:, 0, 1] + m[:, 1, 0]) / s(1), (m[:, 0, 2] + m[:, 2, 0]) / s(1)], -1),
        torch.stack([(m[:, 0, 2] - m[:, 2, 0]) / s(2), (m[:, 0, 1] + m[:, 1, 0]) / s(2), s(2) / 4, (m[:, 1, 2] + m[:, 2, 1]) / s(2)], -1),
        torch.stack([(m[:, 1, 0] - m[:, 0, 1]) / s(3), (m[:, 0, 2] + m[:, 2, 0]) / s(3), (m[:, 1, 2] + m[:, 2, 1]) / s(3), s(3) / 4], -1),
    ]
    for i in range(4):
        q[k == i] = cands[i][k == i]
    return torch.nn.functional.normalize(q, dim=-1)
