"""Blender side (filled in by the extension work)."""
