"""The FLAME rig as Blender data, in x5 FLAME units (y-up) in the armature's local space.

* Mesh: ``rest_vertices(shape)`` as Basis; shape keys ``Exp001..Exp100`` (expression basis, slider
  range widened) and ``Pose01..Pose36`` (FLAME's pose correctives), vertex groups = skin weights.
* Armature: keyable controls ``root`` (the head root: rotation = FLAME's global pose, location =
  a head translation), ``jaw``, ``eye_L``, ``eye_R`` and the deforming ``DEF-*`` bones and
  ``neck`` (fixed at rest in FLAME), all at the FLAME joints with identity rest orientation, so a
  control's pose quaternion is FLAME's local joint rotation.
* ``PoseNN`` are driven by native simple-expression drivers: entry (r, c) of ``R - I`` computed
  from the bone's (unit) ``rotation_quaternion``. The expressions come from :mod:`.driver_expressions`.
* The deforming bones' locations follow FLAME's expression-dependent joints (:func:`_drive_joint_shift`),
  driven from the armature data's copy of the Exp values (:data:`EXPRESSION_MIRROR`).

The head root's pose matrix is the head pose the renderer moves into the camera
(:func:`head_matrix`); :func:`unposed` removes it from evaluated vertices exactly.
"""
import bpy
import numpy as np

from . import driver_expressions

BONES = ("root", "neck", "jaw", "eye_L", "eye_R")  # keyable controls (FLAME joint order)
HEAD_ROOT = BONES[0]
# Deforming bones (vertex groups): driven copies of the controls, so that their joint-shift
# location can read the control's rotation without a dependency cycle. FLAME keeps the neck at rest.
DEFORM = ("DEF-root", "neck", "DEF-jaw", "DEF-eye_L", "DEF-eye_R")
EXPRESSION_KEYS = tuple(f"Exp{i:03d}" for i in range(1, 101))
POSE_KEYS = tuple(f"Pose{i:02d}" for i in range(1, 37))
EXPRESSION_RANGE = 10.0
EXPRESSION_MIRROR = "expression"
"""The armature data's copy of the Exp keys' values (driven), which the joint-shift drivers read."""
# Driver expressions are cut at 255 characters (driver_expressions.MAX_LENGTH): the linear sums
# over the 100 Exp keys are split in chunks.
CHUNK = 10
CHUNKS = 100 // CHUNK


def _as_numpy(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def build_rig(flame, shape, name: str, collection: bpy.types.Collection):
    """Create the FLAME mesh and armature of identity ``shape`` ([300] tensor) in ``collection``.

    Returns ``(mesh_object, armature_object)``; the mesh is parented to the armature.
    """
    rest = _as_numpy(flame.rest_vertices(shape))
    faces = flame.faces.cpu().numpy().astype(np.int32)
    joints = _as_numpy(flame.joints(shape))
    parents = [int(p) for p in flame.parents.tolist()]

    arm_data = bpy.data.armatures.new(f"{name}_rig")
    arm_obj = bpy.data.objects.new(f"{name}_rig", arm_data)
    collection.objects.link(arm_obj)
    _make_bones(arm_obj, joints, parents)

    mesh = bpy.data.meshes.new(f"{name}_flame")
    mesh.vertices.add(len(rest))
    mesh.vertices.foreach_set("co", rest.astype(np.float32).ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update()
    mesh.validate()
    obj = bpy.data.objects.new(f"{name}_flame", mesh)
    collection.objects.link(obj)
    obj.parent = arm_obj

    weights = _as_numpy(flame.skin_weights)
    for j, bone in enumerate(DEFORM):
        group = obj.vertex_groups.new(name=bone)
        for value in np.unique(weights[:, j][weights[:, j] > 0]):
            idx = np.flatnonzero(weights[:, j] == value).tolist()
            group.add(idx, float(value), "REPLACE")
    mod = obj.modifiers.new("FLAME", "ARMATURE")
    mod.object = arm_obj

    obj.shape_key_add(name="Basis", from_mix=False)
    _add_keys(obj, rest, _as_numpy(flame.expression_basis), EXPRESSION_KEYS, EXPRESSION_RANGE)
    _add_keys(obj, rest, _as_numpy(flame.pose_basis), POSE_KEYS, 2.0)
    _drive_pose_keys(obj, arm_obj)
    joint_basis = np.einsum("jv,vck->jck", _as_numpy(flame.J_regressor), _as_numpy(flame.expression_basis))
    _drive_joint_shift(obj, arm_obj, joint_basis)
    return obj, arm_obj


def _make_bones(arm_obj, joints, parents):
    view_layer = bpy.context.view_layer
    previous = view_layer.objects.active
    view_layer.objects.active = arm_obj
    bpy.ops.object.mode_set(mode="EDIT")
    edit = arm_obj.data.edit_bones
    for j in range(len(BONES)):
        for name in {BONES[j], DEFORM[j]}:
            bone = edit.new(name)
            bone.head = joints[j]
            bone.tail = joints[j] + np.array([0.0, 0.1, 0.0])  # +Y, roll 0: identity rest orientation
            bone.roll = 0.0
            bone.use_deform = name == DEFORM[j]
            if parents[j] >= 0:
                bone.parent = edit[DEFORM[parents[j]]]
    bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = previous
    hidden = arm_obj.data.collections.new("Deform")
    hidden.is_visible = False
    for pb in arm_obj.pose.bones:
        pb.rotation_mode = "QUATERNION"
        if pb.name not in BONES:
            hidden.assign(pb.bone)
        elif pb.name != HEAD_ROOT:  # FLAME's joints only rotate (and the neck not even that)
            pb.lock_location = (True, True, True)
    arm_obj.pose.bones["neck"].lock_rotation = (True, True, True)
    arm_obj.pose.bones["neck"].lock_rotation_w = True


def _add_keys(obj, rest, basis, names, limit):
    for k, name in enumerate(names):
        key = obj.shape_key_add(name=name, from_mix=False)
        key.slider_min, key.slider_max = -limit, limit
        key.data.foreach_set("co", (rest + basis[:, :, k]).astype(np.float32).ravel())


def _add_variable(driver, name: str, target_id, data_path: str, id_type: str = "OBJECT"):
    """A single-property variable ``name`` of ``driver`` reading ``data_path`` of ``target_id``."""
    var = driver.variables.new()
    var.name = name
    var.type = "SINGLE_PROP"
    var.targets[0].id_type = id_type
    var.targets[0].id = target_id
    var.targets[0].data_path = data_path


def _quaternion_path(bone: str, i: int) -> str:
    return f'pose.bones["{bone}"].rotation_quaternion[{i}]'


def _scripted(owner, path: str, index: int):
    """A new simple-expression driver on ``owner.path[index]`` (its expression set by the caller)."""
    driver = owner.driver_add(path, index).driver
    driver.type = "SCRIPTED"
    return driver


def _add_quaternion(driver, arm_obj, bone: str):
    """Variables ``w x y z`` (:data:`.driver_expressions.QUATERNION`): the control's rotation."""
    for i, name in enumerate(driver_expressions.QUATERNION):
        _add_variable(driver, name, arm_obj, _quaternion_path(bone, i))


def _drive_pose_keys(obj, arm_obj):
    """``PoseNN`` = entry (r, c) of ``R - I`` of the neck's, jaw's and eyes' rotations (FLAME's pose features)."""
    blocks = obj.data.shape_keys.key_blocks
    for j, bone in enumerate(BONES[1:]):
        for e, expression in enumerate(driver_expressions.R_MINUS_I):
            driver = _scripted(blocks[POSE_KEYS[9 * j + e]], "value", -1)
            _add_quaternion(driver, arm_obj, bone)
            driver.expression = expression


def _drive_joint_shift(obj, arm_obj, joint_basis):
    """FLAME regresses the joints from the expressive mesh (J + dJ, dJ = joint_basis @ expression).

    A bone at J with pose location ``t = (I - R) dJ`` skins exactly like FLAME's joint at J + dJ
    (the identity holds bone by bone down the chain). Each DEF bone copies its control's rotation
    and gets a location driven from the control's quaternion and ``dJ_<bone>``, a property of the
    armature data (a separate ID, evaluated first) driven linearly by the Exp keys.

    The ``dJ`` sums read the Exp values from :data:`EXPRESSION_MIRROR` on the armature data, which
    100 drivers copy from the keys: each key is looked up by name once instead of once per bone
    and axis (Blender resolves every driver variable's path by a linear search of the key blocks,
    when it builds a depsgraph, as each F12 render does, and when it evaluates one: 1,200 lookups
    took 5-8 ms of a 1080p render on a 2-core Xeon). Rigs made before keep their own drivers.
    """
    key = obj.data.shape_keys
    arm_obj.data[EXPRESSION_MIRROR] = [0.0] * len(EXPRESSION_KEYS)
    for k, name in enumerate(EXPRESSION_KEYS):
        driver = arm_obj.data.driver_add(f'["{EXPRESSION_MIRROR}"]', k).driver
        driver.type = "AVERAGE"   # of one variable: the key's value
        _add_variable(driver, "value", key, f'key_blocks["{name}"].value', "KEY")
    exp_names = [f"e{k + 1}" for k in range(len(EXPRESSION_KEYS))]
    sum_names = [[f"d{c * CHUNKS + n}" for n in range(CHUNKS)] for c in range(3)]
    for j, bone in enumerate(BONES):
        if bone == "neck":
            continue  # FLAME keeps the neck at rest: (I - R) = 0
        pb = arm_obj.pose.bones[DEFORM[j]]
        for i in range(4):  # the DEF bone copies its control's rotation
            driver = pb.driver_add("rotation_quaternion", i).driver
            driver.type = "AVERAGE"
            _add_variable(driver, "var", arm_obj, _quaternion_path(bone, i))

        prop = f"dJ_{bone}"
        arm_obj.data[prop] = [0.0] * (3 * CHUNKS)  # per axis c, CHUNKS partial sums over the Exp keys
        for c in range(3):
            for chunk in range(CHUNKS):
                driver = _scripted(arm_obj.data, f'["{prop}"]', c * CHUNKS + chunk)
                lo, hi = chunk * CHUNK, (chunk + 1) * CHUNK
                for k in range(lo, hi):
                    _add_variable(driver, exp_names[k], arm_obj.data, f'["{EXPRESSION_MIRROR}"][{k}]', "ARMATURE")
                driver.expression = driver_expressions.linear_combination(joint_basis[j, c, lo:hi], exp_names[lo:hi])
        for r in range(3):
            driver = _scripted(pb, "location", r)
            _add_quaternion(driver, arm_obj, bone)
            for index, name in enumerate(n for names in sum_names for n in names):
                _add_variable(driver, name, arm_obj.data, f'["{prop}"][{index}]', "ARMATURE")
            translation = None
            if bone == HEAD_ROOT:  # the head root also translates the whole head
                translation = "t"
                _add_variable(driver, translation, arm_obj, f'pose.bones["{bone}"].location[{r}]')
            driver.expression = driver_expressions.joint_shift(r, sum_names, translation)


def axis_angle_to_quaternion(rotvec) -> tuple[float, float, float, float]:
    """(w, x, y, z) of an axis-angle vector (FLAME's pose parameters)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = float(np.linalg.norm(rotvec))
    if angle < 1e-12:
        return (1.0, 0.0, 0.0, 0.0)
    axis = rotvec / angle
    s = np.sin(angle / 2)
    return (float(np.cos(angle / 2)), *(float(v) for v in axis * s))


def set_pose(mesh_obj, arm_obj, expression, global_pose, jaw, eyes, translation=(0.0, 0.0, 0.0)):
    """Set expression coefficients [100], FLAME axis-angle rotations (global, jaw [3], eyes [6]) and
    the head root's translation (head units)."""
    blocks = mesh_obj.data.shape_keys.key_blocks
    for name, value in zip(EXPRESSION_KEYS, expression):
        blocks[name].value = float(value)
    rotations = {"root": global_pose, "neck": (0, 0, 0), "jaw": jaw, "eye_L": eyes[:3], "eye_R": eyes[3:]}
    for bone, rotvec in rotations.items():
        arm_obj.pose.bones[bone].rotation_quaternion = axis_angle_to_quaternion(rotvec)
    arm_obj.pose.bones[HEAD_ROOT].location = tuple(float(v) for v in translation)


def _deform_matrix(arm_obj, bone: str) -> np.ndarray:
    """``[4, 4]`` armature-space matrix taking a bone's rest placement to its pose."""
    pb = arm_obj.pose.bones[bone]
    return np.array(pb.matrix, dtype=np.float64) @ np.linalg.inv(np.array(pb.bone.matrix_local, dtype=np.float64))


def head_matrix(arm_obj) -> np.ndarray:
    """``[4, 4]`` head pose in armature space: the head root control's rigid motion (rotation about
    FLAME's root joint, then its location)."""
    return _deform_matrix(arm_obj, HEAD_ROOT)


def unposed(arm_obj, vertices: np.ndarray) -> np.ndarray:
    """Armature-space posed vertices ``[V, 3]`` without the global head pose: FLAME's vertices for the
    same expression, jaw and eyes and a zero global pose (the inverse of ``DEF-root``'s motion,
    which includes FLAME's expression-dependent root joint)."""
    inverse = np.linalg.inv(_deform_matrix(arm_obj, DEFORM[0]))
    return vertices @ inverse[:3, :3].T + inverse[:3, 3]


def evaluated_vertices(mesh_obj, depsgraph) -> np.ndarray:
    """``[V, 3]`` evaluated vertices in the armature's local space (x5 FLAME units)."""
    evaluated = mesh_obj.evaluated_get(depsgraph)
    mesh = evaluated.to_mesh()
    try:
        co = np.empty(len(mesh.vertices) * 3, dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
    finally:  # the temporary mesh must go even when reading it fails
        evaluated.to_mesh_clear()
    return co.reshape(-1, 3)
