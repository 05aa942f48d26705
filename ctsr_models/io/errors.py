"""Errors that reach a user as one readable line."""
from __future__ import annotations


class InputError(ValueError):
    """The input cannot be used as asked. The message is one line a person can act on."""


class GeometryError(InputError):
    """A DICOM series whose slice geometry is not a regular grid (tilt, gaps, duplicates, ...).

    Attributes:
        findings: machine-readable codes of the problems found (e.g. ``"gantry_tilt"``).
    """

    def __init__(self, message: str, findings: list[str] | None = None) -> None:
        super().__init__(message)
        self.findings = list(findings or [])
