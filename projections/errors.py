"""Errors raised by the projection store. Each names the directory involved."""
from __future__ import annotations


class ProjectionError(Exception):
    """Base class for projection errors."""


class ProjectionFormatError(ProjectionError):
    """The directory was written by a newer (or unknown) projection format version."""


class IndexCatalogError(ProjectionError, ValueError):
    """An index definition is invalid (reserved name, bad field list, ...)."""
