"""The avatar's Gaussians as Blender data: a vertex-only mesh saved inside the .blend.

One vertex per Gaussian (180,255, the official order: 5,023 expression Gaussians, whose positions
are the source FLAME vertices and are replaced by the rig's at render time, then the two lifted
planes), positions in head space (FLAME x5 units, +Y up), and float point attributes:

============================ =====================================================
``gs_color_00..gs_color_31`` the 32 splatted feature channels (0-2 are RGB-like)
``gs_opacity``               opacity 0..1
``gs_scale_0..2``            standard deviations, head units
``gs_rotation_0..3``         quaternion w, x, y, z (as the network made it: not normalised)
``gs_preview``               colour attribute for the viewport (channels 0-2, sRGB-decoded; alpha = opacity)
============================ =====================================================

A Geometry Nodes modifier turns the vertices into points with a material reading ``gs_preview``,
so the avatar shows in the viewport (Material Preview) without the network.
"""
import uuid

import bpy
import numpy as np

N_COLORS = 32
COLOR_ATTRS = tuple(f"gs_color_{i:02d}" for i in range(N_COLORS))
OPACITY_ATTR = "gs_opacity"
SCALE_ATTRS = tuple(f"gs_scale_{i}" for i in range(3))
ROTATION_ATTRS = tuple(f"gs_rotation_{i}" for i in range(4))
PREVIEW_ATTR = "gs_preview"
UID = "gagavatar_uid"
"""Mesh custom property naming the Gaussians' content (the render cache key)."""
PREVIEW_RADIUS = 0.012
PREVIEW_GROUP = "GAGAvatar Gaussian Preview"
PREVIEW_MATERIAL = "GAGAvatar Gaussian Preview"

_CHANNELS = (("colors", COLOR_ATTRS), ("opacities", (OPACITY_ATTR,)), ("scales", SCALE_ATTRS),
             ("rotations", ROTATION_ATTRS))


def write_mesh(name: str, gaussians: dict) -> bpy.types.Mesh:
    """A new mesh holding ``gaussians`` (numpy ``[N, *]`` arrays keyed like ``Avatar.gaussians``)."""
    xyz = np.asarray(gaussians["xyz"], dtype=np.float32)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(len(xyz))
    mesh.vertices.foreach_set("co", xyz.ravel())
    for key, names in _CHANNELS:
        values = np.asarray(gaussians[key], dtype=np.float32)
        for c, attr_name in enumerate(names):
            attr = mesh.attributes.new(attr_name, "FLOAT", "POINT")
            attr.data.foreach_set("value", np.ascontiguousarray(values[:, c]))
    from . import colour
    from ..engine.framing import srgb_to_linear
    preview = np.empty((len(xyz), 4), np.float32)
    preview[:, :3] = colour.to_working_space(srgb_to_linear(np.clip(gaussians["colors"][:, :3], 0.0, 1.0)),
                                             colour.file_conversion()[0])
    preview[:, 3] = np.asarray(gaussians["opacities"], dtype=np.float32)[:, 0]
    attr = mesh.attributes.new(PREVIEW_ATTR, "FLOAT_COLOR", "POINT")
    attr.data.foreach_set("color", preview.ravel())
    mesh[UID] = uuid.uuid4().hex
    mesh.update()
    return mesh


def read_mesh(mesh: bpy.types.Mesh) -> dict:
    """The Gaussians of a mesh made by :func:`write_mesh`: numpy ``[N, *]`` float32 arrays.

    Raises:
        KeyError: an attribute is missing (the mesh was edited or is not an avatar's).
    """
    n = len(mesh.vertices)
    xyz = np.empty(n * 3, np.float32)
    mesh.vertices.foreach_get("co", xyz)
    out = {"xyz": xyz.reshape(n, 3)}
    for key, names in _CHANNELS:
        values = np.empty((len(names), n), np.float32)
        for c, attr_name in enumerate(names):
            attr = mesh.attributes.get(attr_name)
            if attr is None or len(attr.data) != n:
                raise KeyError(attr_name)
            attr.data.foreach_get("value", values[c])
        out[key] = np.ascontiguousarray(values.T)
    return out


def _preview_material() -> bpy.types.Material:
    mat = bpy.data.materials.get(PREVIEW_MATERIAL)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(PREVIEW_MATERIAL)
    if mat.node_tree is None:  # Blender < 5.0 creates materials without nodes
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "GEOMETRY"
    attr.attribute_name = PREVIEW_ATTR
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(attr.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    attr.location, emission.location, output.location = (-400, 0), (-150, 0), (100, 0)
    return mat


def _preview_group() -> bpy.types.NodeTree:
    group = bpy.data.node_groups.get(PREVIEW_GROUP)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(PREVIEW_GROUP, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    source = nodes.new("NodeGroupInput")
    to_points = nodes.new("GeometryNodeMeshToPoints")
    to_points.inputs["Radius"].default_value = PREVIEW_RADIUS
    set_material = nodes.new("GeometryNodeSetMaterial")
    set_material.inputs["Material"].default_value = _preview_material()
    sink = nodes.new("NodeGroupOutput")
    links.new(source.outputs[0], to_points.inputs["Mesh"])
    links.new(to_points.outputs["Points"], set_material.inputs["Geometry"])
    links.new(set_material.outputs["Geometry"], sink.inputs[0])
    for i, node in enumerate((source, to_points, set_material, sink)):
        node.location = (250 * i - 400, 0)
    return group


def add_preview(obj: bpy.types.Object) -> None:
    """Show the Gaussians as coloured points (Geometry Nodes modifier + material)."""
    modifier = obj.modifiers.new("Gaussian Preview", "NODES")
    modifier.node_group = _preview_group()
