"""The FLAME rig in Blender: evaluated (depsgraph) vertices equal flame(...) for the same parameters."""
import numpy as np
import pytest
import torch

from gagavatar.engine.flame import load_flame


@pytest.fixture(scope="module")
def rig(flame_asset):
    import bpy
    from gagavatar.gagavatar_blender import rig as rig_module
    bpy.ops.wm.read_factory_settings(use_empty=True)
    flame = load_flame(flame_asset)
    shape = torch.randn(300, generator=torch.Generator().manual_seed(1)) * 0.5
    collection = bpy.data.collections.new("avatar")
    bpy.context.scene.collection.children.link(collection)
    mesh_obj, arm_obj = rig_module.build_rig(flame, shape, "avatar", collection)
    return flame, shape, mesh_obj, arm_obj, rig_module


def _params(seed, expression_scale):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(100, generator=g) * expression_scale, torch.randn(3, generator=g) * 0.3,
            torch.randn(3, generator=g) * 0.2, torch.randn(6, generator=g) * 0.2, torch.randn(3, generator=g))


def _pose(rig, seed, expression_scale):
    """Pose the rig with random parameters; return (evaluated vertices, FLAME's, FLAME's without global pose)."""
    import bpy
    flame, shape, mesh_obj, arm_obj, rig_module = rig
    expression, global_pose, jaw, eyes, translation = _params(seed, expression_scale)
    rig_module.set_pose(mesh_obj, arm_obj, expression.tolist(), global_pose.tolist(), jaw.tolist(), eyes.tolist(),
                        translation.tolist())
    got = rig_module.evaluated_vertices(mesh_obj, bpy.context.evaluated_depsgraph_get())
    with torch.no_grad():
        want = flame(shape=shape[None], expression=expression[None],
                     pose=torch.cat([global_pose, jaw])[None], eyes=eyes[None])[0].numpy()
        rootless = flame(shape=shape[None], expression=expression[None],
                         pose=torch.cat([torch.zeros(3), jaw])[None], eyes=eyes[None])[0].numpy()
    return got, want + translation.numpy(), rootless


def _compare(rig, seed, expression_scale):
    got, want, _ = _pose(rig, seed, expression_scale)
    return np.abs(got - want).max()


def test_rig_structure(rig, capfd):
    import bpy
    _, _, mesh_obj, arm_obj, rig_module = rig
    blocks = mesh_obj.data.shape_keys.key_blocks
    assert len(mesh_obj.data.vertices) == 5023
    assert [b.name for b in blocks][1:] == list(rig_module.EXPRESSION_KEYS + rig_module.POSE_KEYS)
    assert blocks["Exp001"].slider_min < -1 and blocks["Exp001"].slider_max > 1
    assert {b.name for b in arm_obj.data.bones} == set(rig_module.BONES + rig_module.DEFORM)
    assert {b.name for b in arm_obj.data.bones if b.use_deform} == set(rig_module.DEFORM)
    drivers = mesh_obj.data.shape_keys.animation_data.drivers
    assert len(drivers) == 36 and all(d.driver.is_simple_expression for d in drivers)
    bpy.context.view_layer.update()  # first evaluation builds the relations: no dependency cycle
    assert "cycle" not in "".join(capfd.readouterr())
    # Each Exp key is read by one driver (the armature data's mirror), not once per bone and axis:
    # Blender finds a key block by a linear search of their names, per variable, per depsgraph build.
    paths = [v.targets[0].data_path for owner in (arm_obj, arm_obj.data, mesh_obj.data.shape_keys)
             for d in owner.animation_data.drivers for v in d.driver.variables]
    assert sorted(p for p in paths if p.startswith("key_blocks")) == \
        sorted(f'key_blocks["{name}"].value' for name in rig_module.EXPRESSION_KEYS)
    for owner in (arm_obj, arm_obj.data):
        # Native drivers only: simple expressions, or the deform bones copying their control (AVERAGE).
        assert all(d.driver.is_simple_expression if d.driver.type == "SCRIPTED" else d.driver.type == "AVERAGE"
                   for d in owner.animation_data.drivers)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rig_matches_flame_pose_only(rig, seed):
    """Random head, jaw and eye rotations and shape (expression 0): exact within 1e-4."""
    assert _compare(rig, seed, 0.0) < 1e-4


@pytest.mark.parametrize("seed", [3, 4])
def test_rig_matches_flame_with_expression(rig, seed):
    """Random expressions too: the driven joint shift makes the bones follow FLAME's expression-
    dependent joints."""
    assert _compare(rig, seed, 1.0) < 1e-4


def test_unposed_removes_the_head_pose_exactly(rig):
    """What the renderer feeds the network: the evaluated mesh without the head root's motion is
    FLAME with a zero global pose; the head root's matrix is the rigid head pose (rotation about
    the root joint, then the translation)."""
    from mathutils import Quaternion
    _, _, _, arm_obj, rig_module = rig
    got, _, rootless = _pose(rig, 5, 1.0)
    assert np.abs(rig_module.unposed(arm_obj, got) - rootless).max() < 1e-4
    pb = arm_obj.pose.bones["root"]
    H = rig_module.head_matrix(arm_obj)
    R = np.array(Quaternion(pb.rotation_quaternion).to_matrix())
    J0 = np.array(pb.bone.head_local)
    assert np.allclose(H[:3, :3], R, atol=1e-6)
    assert np.allclose(H[:3, 3], J0 + np.array(pb.location) - R @ J0, atol=1e-5)


def test_evaluated_vertices_frees_the_temporary_mesh_on_errors(rig):
    """``to_mesh_clear`` runs even when reading the evaluated mesh fails."""
    from types import SimpleNamespace
    rig_module = rig[4]
    cleared = []

    def fail(*args):
        raise RuntimeError("read failed")
    mesh = SimpleNamespace(vertices=type("Vertices", (), {"__len__": lambda self: 3, "foreach_get": fail})())
    evaluated = SimpleNamespace(to_mesh=lambda: mesh, to_mesh_clear=lambda: cleared.append(True))
    obj = SimpleNamespace(evaluated_get=lambda depsgraph: evaluated)
    with pytest.raises(RuntimeError, match="read failed"):
        rig_module.evaluated_vertices(obj, None)
    assert cleared == [True]


def test_bulk_keys_on_every_blender(rig):
    """fcurves: shape-key and array keys with their channel group, through the action API of the
    running Blender (4.2/4.3 ``Action.fcurves``, 4.4/4.5 layered actions without ``group_name``, 5.x)."""
    import bpy
    from gagavatar.gagavatar_blender import fcurves
    _, _, mesh_obj, arm_obj, _ = rig
    key = mesh_obj.data.shape_keys
    fcurve = fcurves.ensure_fcurve(key, 'key_blocks["Exp001"].value', 0, "Expression")
    fcurves.write_keys(fcurve, np.array([1.0, 2.0, 3.0]), np.array([0.0, 5.0, -3.0]))
    assert fcurves.ensure_fcurve(key, 'key_blocks["Exp001"].value', 0, "Expression") == fcurve
    assert fcurve.group.name == "Expression" and len(fcurve.keyframe_points) == 3
    fcurves.key_array(arm_obj, 'pose.bones["root"].location', np.array([1.0, 2.0]),
                      np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]]), "root")
    try:
        bpy.context.scene.frame_set(2)
        assert key.key_blocks["Exp001"].value == pytest.approx(5.0)  # past the default 0..1 slider range
        assert tuple(arm_obj.pose.bones["root"].location) == pytest.approx((1.0, 2.0, 3.0))
    finally:
        key.animation_data_clear()
        arm_obj.animation_data_clear()
        key.key_blocks["Exp001"].value = 0.0
        arm_obj.pose.bones["root"].location = (0.0, 0.0, 0.0)
