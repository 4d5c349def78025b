"""Errors raised for bad datasets and bad samples: each names the file and what is wrong."""

from __future__ import annotations

import os

from mdp_hub.errors import UserError


class DatasetSpecError(UserError, ValueError):
    """A dataset spec string (``NAME:PATH[:split]``) that names no known format or is malformed."""


class DatasetLayoutError(UserError, ValueError):
    """The dataset folder is missing, has the wrong layout, or the split is empty (known at start-up)."""


class BadSampleError(UserError, ValueError):
    """One sample cannot be used: missing or corrupt file, size mismatch, label values out of range."""

    def __init__(self, path: str | os.PathLike, problem: str | None = None):
        # One argument: the whole message, as torch rebuilds an error raised in a DataLoader worker.
        self.path = str(path)
        self.problem = problem
        super().__init__(self.path if problem is None else f"{self.path}: {problem}")
