"""Checks of an output location before anything is written to it (nothing is created here)."""
from __future__ import annotations

import os
from pathlib import Path

from nnunet_covid.core.errors import UsageError


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """Raise :class:`UsageError` unless ``folder`` is, or can be created as, a folder this process may write in."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.exists():
        raise UsageError(f"{what} {folder} is a broken link")
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} exists and is not a folder")
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{what} {folder} cannot be created: {existing} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {folder}: no permission to write in {existing}")


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (links resolved)."""
    path, folder = Path(path).resolve(), Path(folder).resolve()
    return path == folder or folder in path.parents
