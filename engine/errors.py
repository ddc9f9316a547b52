"""Exceptions for user-facing failures.

Every error a user can cause (a missing asset, a corrupt file, an image without a face, ...)
is a :class:`GAGAvatarError` whose message is one line saying what is wrong and what to do.
The CLI prints such errors without a traceback; the Blender operators ``self.report`` them.
"""


class GAGAvatarError(Exception):
    """A user-facing error; ``str(err)`` is a one-line message with the remedy."""


class AssetError(GAGAvatarError):
    """A model asset (checkpoint, FLAME, ...) is missing, truncated, corrupt or of the wrong kind."""


class UnsafeFileError(AssetError):
    """A file tried to unpickle something other than plain data; nothing from it was executed."""


class NoFaceError(GAGAvatarError):
    """No face was found in an image."""


class Cancelled(GAGAvatarError):
    """A long job was cancelled by the user."""
