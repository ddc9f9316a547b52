"""Blender side: preferences, properties, the FLAME rig, the timeline, the GAGAVATAR render engine.

Registering imports neither torch nor the engine: they are imported when an operator runs or a
frame renders, so the add-on registers (and says what is missing) without its dependencies.
"""
from . import deps, handlers, preferences, properties, render_engine


def register():
    from .. import operators, panels
    deps.add_site_packages()
    properties.register()
    preferences.register()
    render_engine.register()
    operators.register()
    panels.register()
    handlers.register()


def unregister():
    from .. import operators, panels
    handlers.unregister()
    panels.unregister()
    operators.unregister()
    render_engine.unregister()
    preferences.unregister()
    properties.unregister()
    deps.remove_site_packages()
