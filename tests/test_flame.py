"""engine/flame.py: parity with the official FLAME on the kit case, the three file kinds,
landmarks (static and dynamic contour), the rig exports, and load errors."""
import os
import pickle
import sys

import numpy as np
import pytest
import scipy.sparse
import torch

from gagavatar.engine.errors import AssetError, UnsafeFileError
from gagavatar.engine.flame import FLAME, contour_rows, load_flame
from tests.conftest import fake_chumpy, py2_dumps


@pytest.fixture(scope="module")
def asset(flame_asset):
    return torch.load(flame_asset, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def flame(flame_asset):
    return load_flame(flame_asset)


def _case_params(case):
    i = case["inputs"]
    return dict(shape=i["shape"][None], expression=i["exp"][None], pose=i["pose"][None], eyes=i["eye"][None])


@pytest.fixture(scope="module")
def params():
    """Identity, expression, pose and eyes of one head, ``[1, ...]`` (seeded)."""
    g = torch.Generator().manual_seed(0)
    return dict(shape=0.6 * torch.randn(1, 300, generator=g), expression=0.8 * torch.randn(1, 100, generator=g),
                pose=0.15 * torch.randn(1, 6, generator=g), eyes=0.1 * torch.randn(1, 6, generator=g))


def _np_model(asset):
    return {k: v.numpy() for k, v in asset["flame_model"].items()}


def _write_chumpy_pkl(asset, path):
    """A generic_model.pkl look-alike: float64 arrays, uint32 faces, chumpy ``Ch`` shapedirs, a
    chumpy ``Select`` posedirs, a csc ``J_regressor`` under scipy's old module name, unused
    chumpy nodes; a Python 2 style pickle."""
    m = _np_model(asset)
    posedirs = m["posedirs"].astype(np.float64)
    with fake_chumpy() as ch:
        Ch, Select, exp = ch.Ch, ch.Select, ch.exp
        data = {
            "v_template": m["v_template"].astype(np.float64), "f": m["f"].astype(np.uint32),
            "shapedirs": Ch(x=m["shapedirs"].astype(np.float64)),
            "posedirs": Select(a=Ch(x=posedirs[..., ::-1].copy()), preferred_shape=posedirs.shape,
                               idxs=np.arange(posedirs.size).reshape(posedirs.shape)[..., ::-1].ravel()),
            "J_regressor": scipy.sparse.csc_matrix(m["J_regressor"].astype(np.float64)),
            "kintree_table": m["kintree_table"].astype(np.uint32), "weights": m["weights"].astype(np.float64),
            "bs_style": "lbs", "bs_type": "lrotmin", "trans": Ch(x=np.zeros(3)), "unused": exp(x=Ch(x=np.zeros(3))),
        }
        raw = py2_dumps(data)
    raw = raw.replace(b"scipy.sparse._csc\n", b"scipy.sparse.csc\n")
    assert b"scipy.sparse.csc\ncsc_matrix" in raw and b"chumpy.ch\nCh" in raw
    path.write_bytes(raw)
    return path


# --- parity -------------------------------------------------------------------------------------

def test_kit_flame_asset_is_the_reference_one(kit, case, kit_flame):
    assert kit.compare.verify_flame_asset(torch.load(kit_flame, map_location="cpu", weights_only=True), case) == []


def test_vertices_match_official(kit, case, kit_flame):
    flame, params = load_flame(kit_flame), _case_params(case)
    kit.compare.check(case["outputs"]["flame_vertices"], flame(**params), "flame_vertices")
    kit.compare.check(case["outputs"]["flame_vertices_zero_params"], flame(), "flame_vertices_zero_params")
    zeros = dict(shape=torch.zeros(1, 300), expression=torch.zeros(1, 100), pose=torch.zeros(1, 6),
                 eyes=torch.zeros(1, 6))
    torch.testing.assert_close(flame(**zeros), flame(), rtol=0, atol=0)


def test_batch_and_broadcast(flame, params):
    one = flame(**params)
    two = flame(shape=params["shape"], expression=params["expression"].expand(2, -1),
                pose=torch.cat([params["pose"], torch.zeros(1, 6)]), eyes=params["eyes"])
    torch.testing.assert_close(two[:1], one)
    torch.testing.assert_close(two[1:], flame(shape=params["shape"], expression=params["expression"],
                                              eyes=params["eyes"]))
    assert flame.faces.dtype == torch.long and flame.faces.shape[1] == 3
    assert (flame.n_shape, flame.n_expression) == (300, 100)
    with pytest.raises(ValueError, match="pose"):
        flame(pose=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="shape must be \\[3, 300\\]"):
        flame(shape=torch.zeros(2, 300), expression=torch.zeros(3, 100))


def test_fewer_components(flame_asset, flame, params):
    small = load_flame(flame_asset, n_shape=50, n_expression=20)
    shape, exp = params["shape"].clone(), params["expression"].clone()
    shape[:, 50:] = 0
    exp[:, 20:] = 0
    torch.testing.assert_close(small(shape[:, :50], exp[:, :20], params["pose"], params["eyes"]),
                               flame(shape, exp, params["pose"], params["eyes"]))


# --- other file kinds ---------------------------------------------------------------------------

def test_npz_and_chumpy_pkl_give_the_same_model(tmp_path, asset, flame, params):
    np.savez(tmp_path / "flame.npz", **_np_model(asset))
    pkl = _write_chumpy_pkl(asset, tmp_path / "generic_model.pkl")
    expected = flame(**params)
    for path in (tmp_path / "flame.npz", pkl):
        other = load_flame(path)
        assert "chumpy" not in sys.modules
        assert torch.equal(other(**params), expected)
        assert torch.equal(other.faces, flame.faces) and torch.equal(other.parents, flame.parents)
        assert not other.has_landmarks
        with pytest.raises(AssetError, match="landmarks_path"):
            other.landmarks(expected)


def test_landmarks_from_another_file(tmp_path, asset, flame_asset, flame, params):
    np.savez(tmp_path / "flame.npz", **_np_model(asset))
    lmk = {k: v.numpy() for k, v in asset["lmk_embeddings"].items()}
    np.save(tmp_path / "landmark_embedding.npy", np.array(lmk, dtype=object), allow_pickle=True)
    (tmp_path / "emb.pkl").write_bytes(pickle.dumps({"lmk_embeddings": lmk}, protocol=2))
    verts = flame(**params)
    yaw = torch.tensor([0.2])
    for source in (flame_asset, tmp_path / "landmark_embedding.npy", tmp_path / "emb.pkl"):
        other = load_flame(tmp_path / "flame.npz", landmarks_path=source)
        torch.testing.assert_close(other.landmarks(verts), flame.landmarks(verts), rtol=0, atol=0)
        torch.testing.assert_close(other.landmarks(verts, yaw), flame.landmarks(verts, yaw), rtol=0, atol=0)
    without_contour = {k: v for k, v in lmk.items() if not k.startswith("dynamic")}
    np.save(tmp_path / "static.npy", np.array(without_contour, dtype=object), allow_pickle=True)
    other = load_flame(tmp_path / "flame.npz", landmarks_path=tmp_path / "static.npy")
    torch.testing.assert_close(other.landmarks(verts), flame.landmarks(verts))
    with pytest.raises(AssetError, match="dynamic contour"):
        other.landmarks(verts, yaw)


# --- landmarks ------------------------------------------------------------------------------------

def _barycentric_points(vertices, faces, face_idx, bary):
    """Landmarks by hand: sum_k bary[l, k] * vertices[faces[face_idx[l], k]]."""
    tri = vertices[:, faces[face_idx]]                    # [B, L, 3 corners, 3]
    return (tri * bary[None, :, :, None]).sum(2)


def test_landmarks_lie_on_their_triangles(asset, flame, params):
    lmk = asset["lmk_embeddings"]
    verts = flame(**params)
    out = flame.landmarks(verts)
    assert out.shape == (1, 70, 3)
    faces = asset["flame_model"]["f"]
    idx, bary = lmk["full_lmk_faces_idx_with_eye"][0], lmk["full_lmk_bary_coords_with_eye"][0]
    torch.testing.assert_close(out, _barycentric_points(verts, faces, idx, bary))
    tri = verts[0, faces[idx]]                            # each point is inside its triangle's plane
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((out[0] - tri[:, 0]) * normal).sum(-1).abs().max() < 1e-5 * normal.norm(dim=-1).max()
    torch.testing.assert_close(flame.landmarks(2 * verts), 2 * out)


def test_dynamic_contour(asset, flame, params):
    lmk = asset["lmk_embeddings"]
    faces = asset["flame_model"]["f"]
    deg = torch.tensor([0.0, -10.0, 10.0, 39.4, -39.4, 60.0, -60.0])
    rows = contour_rows(torch.deg2rad(deg))
    assert rows.tolist() == [0, 10, 49, 78, 39, 78, 39]
    verts = flame(**params).expand(len(deg), -1, -1)
    out = flame.landmarks(verts, yaw=torch.deg2rad(deg))
    static = flame.landmarks(verts)
    torch.testing.assert_close(out[:, 17:], static[:, 17:], rtol=0, atol=0)
    for b, r in enumerate(rows.tolist()):
        expected = _barycentric_points(verts[b:b + 1], faces, lmk["dynamic_lmk_faces_idx"][r],
                                       lmk["dynamic_lmk_bary_coords"][r])
        torch.testing.assert_close(out[b:b + 1, :17], expected)


def test_head_yaw():
    a = torch.tensor([0.3, -0.5, 0.0])
    c, s = torch.cos(a), torch.sin(a)
    ry = torch.zeros(3, 3, 3)
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 1, 1], ry[:, 2, 0], ry[:, 2, 2] = c, s, 1, -s, c
    torch.testing.assert_close(FLAME.head_yaw(ry), a)
    front = ry @ torch.tensor([0.0, 0.0, 1.0])
    assert front[0, 0] > 0  # positive yaw turns the face toward +X


# --- rig exports -------------------------------------------------------------------------------

def _rodrigues(aa):
    angle = (aa + 1e-8).norm(dim=-1, keepdim=True)
    k = aa / angle
    zero = torch.zeros_like(k[:, 0])
    K = torch.stack([zero, -k[:, 2], k[:, 1], k[:, 2], zero, -k[:, 0], -k[:, 1], k[:, 0], zero], -1).view(-1, 3, 3)
    eye = torch.eye(3, dtype=aa.dtype)
    return eye + angle.sin()[..., None] * K + (1 - angle.cos())[..., None] * K @ K


def _rig_vertices(flame, shape, expression, pose, eyes, joints):
    """Reference LBS from the exports only (float64): shape keys, pose correctives, bones."""
    d = torch.float64
    v = flame.rest_vertices(shape).to(d) + flame.expression_basis.to(d) @ expression.to(d)
    full = torch.cat([pose[:3], torch.zeros(3), pose[3:], eyes]).to(d).view(5, 3)
    R = _rodrigues(full)
    v = v + flame.pose_basis.to(d) @ (R[1:] - torch.eye(3, dtype=d)).reshape(36)
    J = joints.to(d)
    world = []
    for j, p in enumerate(flame.parents.tolist()):
        local = torch.eye(4, dtype=d)
        local[:3, :3] = R[j]
        local[:3, 3] = J[j] - (J[p] if p >= 0 else 0)
        world.append(local if p < 0 else world[p] @ local)
    skin = []
    for j, G in enumerate(world):
        G = G.clone()
        G[:3, 3] -= G[:3, :3] @ J[j]
        skin.append(G)
    T = torch.einsum("vj,jab->vab", flame.skin_weights.to(d), torch.stack(skin))
    return (T[:, :3, :3] @ v[..., None])[..., 0] + T[:, :3, 3]


def test_rig_exports_reproduce_forward(flame, params):
    shape, exp = params["shape"][0], params["expression"][0]
    zero6 = torch.zeros(6)
    assert flame.rest_vertices().shape == (5023, 3) and flame.expression_basis.shape == (5023, 3, 100)
    assert flame.skin_weights.shape == (5023, 5) and flame.pose_basis.shape == (5023, 3, 36)
    assert flame.joints(shape).shape == (5, 3) and flame.parents.tolist()[0] == -1
    # expression only: shape keys, no skinning needed
    torch.testing.assert_close(flame.rest_vertices(shape) + flame.expression_basis @ exp,
                               flame(shape[None], exp[None])[0], atol=1e-5, rtol=1e-5)
    cases = [  # (expression, pose, eyes, joints)
        (torch.zeros(100), torch.tensor([0, 0, 0, 0.25, 0.02, -0.03]), zero6, flame.joints(shape)),
        (exp, params["pose"][0], params["eyes"][0], flame.joints(shape, exp)),
    ]
    for e, pose, eyes, joints in cases:
        ref = _rig_vertices(flame, shape, e, pose, eyes, joints)
        torch.testing.assert_close(ref.float(), flame(shape[None], e[None], pose[None], eyes[None])[0],
                                   atol=1e-5, rtol=1e-5)
    assert (flame.joints(shape, exp) - flame.joints(shape)).abs().max() > 0  # joints follow the expression


# --- errors -------------------------------------------------------------------------------------

def _one_line(err):
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_load_errors(tmp_path, flame_asset, asset):
    with pytest.raises(AssetError) as err:
        load_flame(tmp_path / "missing.pt")
    assert "not found" in _one_line(err)

    cut = tmp_path / "cut.pt"
    data = flame_asset.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(AssetError) as err:
        load_flame(cut)
    assert "truncated" in _one_line(err)

    good = pickle.dumps({k: v.numpy() for k, v in asset["flame_model"].items()}, protocol=2)
    (tmp_path / "cut.pkl").write_bytes(good[: len(good) // 3])
    with pytest.raises(AssetError) as err:
        load_flame(tmp_path / "cut.pkl")
    assert "corrupt" in _one_line(err)

    torch.save({"model": {"w": torch.zeros(2)}, "meta_cfg": {"MODEL": {"NAME": "GAGAvatar"}}}, tmp_path / "gaga.pt")
    with pytest.raises(AssetError) as err:
        load_flame(tmp_path / "gaga.pt")
    assert "GAGAvatar checkpoint" in _one_line(err)

    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(AssetError, match="not a FLAME model"):
        load_flame(tmp_path / "other.pt")

    bad = _np_model(asset)
    bad["shapedirs"] = bad["shapedirs"][..., :350]
    del bad["weights"]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(AssetError) as err:
        load_flame(tmp_path / "bad.npz")
    assert "'weights'" in _one_line(err)
    bad["weights"] = _np_model(asset)["weights"]
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(AssetError, match="'shapedirs' is \\[5023, 3, 350\\]"):
        load_flame(tmp_path / "bad.npz")

    np.save(tmp_path / "nolmk.npy", np.array({"foo": np.zeros(3)}, dtype=object), allow_pickle=True)
    with pytest.raises(AssetError, match="full_lmk_faces_idx_with_eye"):
        load_flame(flame_asset, landmarks_path=tmp_path / "nolmk.npy")
    lmk = {k: v.numpy() for k, v in asset["lmk_embeddings"].items()}
    lmk["full_lmk_faces_idx_with_eye"] = lmk["full_lmk_faces_idx_with_eye"] + 100000
    np.savez(tmp_path / "far.npz", **lmk)
    with pytest.raises(AssetError, match="missing faces"):
        load_flame(flame_asset, landmarks_path=tmp_path / "far.npz")


def test_unsupported_chumpy_node_named(tmp_path, asset):
    model = _np_model(asset)
    with fake_chumpy() as ch:
        model["weights"] = ch.sin(x=model["weights"])
        (tmp_path / "node.pkl").write_bytes(pickle.dumps(model, protocol=2))
    with pytest.raises(AssetError, match="chumpy.ch_ops.sin"):
        load_flame(tmp_path / "node.pkl")


def test_pickle_payload_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    for name, data in (("evil.pkl", pickle.dumps({"v_template": Evil()}, protocol=2)),
                       ("evil.npy", None)):
        path = tmp_path / name
        if data is None:
            np.save(path, np.array({"v_template": Evil()}, dtype=object), allow_pickle=True)
        else:
            path.write_bytes(data)
        with pytest.raises(UnsafeFileError) as err:
            load_flame(path)
        assert "refused" in _one_line(err)
    torch.save({"flame_model": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeFileError):
        load_flame(tmp_path / "evil.pt")
    assert not marker.exists()
