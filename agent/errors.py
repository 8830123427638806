"""Errors the agent reports to people: each carries a one-line message that says what to do."""


class FaceagentError(Exception):
    """Base class: a clear, expected failure (bad input, bad model), never a bug."""


class ImageError(FaceagentError):
    """An image could not be read or has an unusable shape, size or type."""


class ModelError(FaceagentError):
    """A model or its manifest is missing, tampered with, or unusable."""


class NoFaceError(FaceagentError):
    """An image that had to contain a face contains none."""


class GalleryError(FaceagentError):
    """The gallery database is missing, locked, read-only, corrupt, foreign, or asked about an unknown person."""


class ConfigError(FaceagentError):
    """The configuration file is unreadable or invalid; the message names the bad `section.key`."""
