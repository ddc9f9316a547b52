"""The compositor side: the scene's compositor node tree and a File Output for every GAGAvatar pass.

Blender 5.0 changed the compositor's data model, and 5.3 its place in the scene; all are handled here:

* 5.3: the scene has a stack of compositor effects (``scene.compositor_effects``), each with a
  node group; the tree is the active effect's (``scene.compositing_node_group`` still reads it,
  deprecated, to be removed in 6.0). Otherwise as 5.0.
* 5.0-5.2: the tree is a compositor node group in ``scene.compositing_node_group``; its Group Output is
  the render result (there is no Composite node); the File Output node has ``directory``,
  ``file_name`` and ``file_output_items``, and its format a ``media_type``.
* 4.2-4.5: ``scene.use_nodes`` + ``scene.node_tree``; a Composite node is the render result; the
  File Output node has ``base_path`` and ``file_slots``.
"""
from __future__ import annotations

import bpy

PASSES = (("Image", "RGBA"), ("Coarse", "RGBA"), ("Depth", "FLOAT"))
"""Render Layers sockets written by :func:`add_pass_outputs` (``Image`` carries Combined's alpha)."""
OUTPUT_NODE = "GAGAvatar Passes"


def _scene_node_tree(scene) -> bool:
    """Blender 4.2-4.5: the tree is ``scene.node_tree`` (5.3's deprecated ``compositing_node_group``
    is not read to tell)."""
    return not (hasattr(scene, "compositor_effects") or hasattr(scene, "compositing_node_group"))


def existing_tree(scene):
    """The scene's compositor node tree, or None; changes nothing."""
    if _scene_node_tree(scene):
        return scene.node_tree
    if hasattr(scene, "compositor_effects"):  # Blender 5.3+
        effect = scene.compositor_effects.active
        return None if effect is None else effect.node_group
    return scene.compositing_node_group  # Blender 5.0-5.2


def node_tree(scene, create: bool = True):
    """The scene's compositor node tree, created (Render Layers -> result) if there is none and ``create``."""
    tree = existing_tree(scene)
    if _scene_node_tree(scene):
        if tree is None and not create:
            return None
        scene.use_nodes = True  # makes the default tree: Render Layers -> Composite
        return scene.node_tree
    if tree is None and create:
        tree = bpy.data.node_groups.new(f"{scene.name} Compositing", "CompositorNodeTree")
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        layers = tree.nodes.new("CompositorNodeRLayers")
        result = tree.nodes.new("NodeGroupOutput")
        tree.links.new(layers.outputs["Image"], result.inputs[0])
        layers.location, result.location = (-300, 0), (200, 0)
        set_node_tree(scene, tree)
    return tree


def set_node_tree(scene, tree) -> None:
    """Make ``tree`` (a ``CompositorNodeTree``, or None) the scene's compositor (Blender 5.0+): 5.3+,
    the active effect's node group (an effect is added if there is none); 5.0-5.2,
    ``scene.compositing_node_group``."""
    if hasattr(scene, "compositor_effects"):
        effects = scene.compositor_effects
        effect = effects.active
        if effect is None and tree is None:
            return
        (effect or effects.new(name="Compositing")).node_group = tree
    else:
        scene.compositing_node_group = tree


def render_layers_node(tree, scene, view_layer):
    """The tree's Render Layers node for ``view_layer`` (added if missing)."""
    for node in tree.nodes:
        if node.bl_idname == "CompositorNodeRLayers" and node.scene in (None, scene) and node.layer == view_layer.name:
            return node
    node = tree.nodes.new("CompositorNodeRLayers")
    node.scene, node.layer = scene, view_layer.name
    node.location = (-300, -300)
    return node


def linked_layers(scene, socket: str) -> set[str]:
    """Names of the view layers of ``scene`` whose Render Layers node in the scene's compositor has
    its ``socket`` output linked."""
    tree = existing_tree(scene)
    if tree is None:
        return set()
    return {link.from_node.layer for link in tree.links
            if link.from_node.bl_idname == "CompositorNodeRLayers" and link.from_socket.name == socket
            and link.from_node.scene in (None, scene)}


def enable_linked_coarse_passes() -> None:
    """Turn the Coarse pass on for every view layer whose compositor uses its socket, so that files
    from before the pass was optional (it was always rendered) keep their links working: run when a
    file is opened (:mod:`.handlers`)."""
    for scene in bpy.data.scenes:
        if scene.library is not None:   # linked from another file: read-only here
            continue
        for name in linked_layers(scene, "Coarse"):
            view_layer = scene.view_layers.get(name)
            if view_layer is not None and not view_layer.gagavatar.use_pass_coarse:
                view_layer.gagavatar.use_pass_coarse = True


def add_pass_outputs(scene, view_layer, directory: str, prefix: str = "gagavatar_"):
    """Write Image (RGBA), Coarse and Depth to OpenEXR files per frame, ``<directory><prefix><pass><frame>.exr``.

    Turns the Z and Coarse passes on; replaces a File Output node made earlier by this function.
    Returns the node.
    """
    view_layer.use_pass_z = True
    view_layer.gagavatar.use_pass_coarse = True
    tree = node_tree(scene)
    layers = render_layers_node(tree, scene, view_layer)
    old = tree.nodes.get(OUTPUT_NODE)
    if old is not None:
        tree.nodes.remove(old)
    out = tree.nodes.new("CompositorNodeOutputFile")
    out.name = out.label = OUTPUT_NODE
    out.location = (200, -300)
    if hasattr(out.format, "media_type"):  # Blender 5.0: single-layer files
        out.format.media_type = "IMAGE"
    out.format.file_format = "OPEN_EXR"
    out.format.color_depth = "32"
    out.format.color_mode = "RGBA"  # a new node copies the scene's output format, which may be RGB
    if hasattr(out, "file_output_items"):  # Blender 5.0
        out.directory, out.file_name = directory, prefix
        for name, kind in PASSES:
            out.file_output_items.new(kind, name)
        inputs = {name: out.inputs[name] for name, _ in PASSES}
    else:  # Blender 4.2-4.5: the slot's path is the file name
        out.base_path = directory
        out.file_slots.clear()
        for name, _ in PASSES:
            out.file_slots.new(f"{prefix}{name}")
        inputs = {name: out.inputs[f"{prefix}{name}"] for name, _ in PASSES}
    for name, socket in inputs.items():
        tree.links.new(layers.outputs[name], socket)
    return out
