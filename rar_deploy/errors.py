"""Exceptions a user can act on. The CLI prints their message as one line and exits non-zero."""


class RARDeployError(Exception):
    """Base class for every error caused by bad input rather than by a bug."""


class CheckpointError(RARDeployError):
    """A checkpoint file is missing, unreadable, of the wrong kind, or does not match the model."""


class ExportError(RARDeployError):
    """An export could not be completed (bad options, failed verification, unwritable output)."""
