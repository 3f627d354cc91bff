"""Project exceptions: one readable message, no traceback needed to understand the problem."""

from __future__ import annotations


class MSAMError(ValueError):
    """Bad input or state that the user can fix (wrong file, click outside the image, ...).

    Subclasses ``ValueError`` so generic callers that already catch ``ValueError`` keep working.
    """


class InvalidVolumeError(MSAMError):
    """The image or label array cannot be used (wrong dimensionality, empty, non-finite, ...)."""


class ClickOutsideError(MSAMError):
    """A click lies outside the image volume."""


class ModelNotFoundError(MSAMError):
    """No checkpoint was found where one was expected (e.g. the embedded default model)."""


class OutputError(MSAMError):
    """An output path that must not be written: an input file, a folder, a missing folder, a wrong suffix."""


class OutputExistsError(OutputError):
    """The output file exists and replacing it was not asked for (CLI: ``--overwrite``)."""
