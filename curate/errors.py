"""Curation's user-facing error: the toolkit-wide one (defined with the other shared types in `schemas`)."""

from schemas.errors import PebrError

__all__ = ["PebrError"]
