"""Finding the files of a raw download: symbolic links to folders and files are followed, link cycles are not.

Raw data often lives on another disk and is linked in (e.g. one link per LIDC-IDRI patient folder);
``Path.rglob`` does not follow links to folders before Python 3.13, so every converter lists files
with :func:`walk_files` / :func:`subfolders` instead. Each real folder is visited once (a link cycle
or a second link to the same folder adds nothing). Hidden entries (``.DS_Store``, ``._*`` AppleDouble
files) are left out. A folder that cannot be read is a ConversionError naming it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from nnunet_covid.core.errors import ConversionError


def _fail(error: OSError) -> None:
    if not os.path.lexists(error.filename):
        raise ConversionError(f"folder {error.filename} does not exist")
    raise ConversionError(f"cannot read folder {error.filename}: {error.strerror}")


def _walk(root: str | os.PathLike) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` following links, each real folder once, hidden entries dropped, names sorted."""
    visited: set[str] = set()
    for folder, dirs, files in os.walk(root, onerror=_fail, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        yield Path(folder), dirs, sorted(f for f in files if not f.startswith("."))


def walk_files(root: str | os.PathLike, suffixes: tuple[str, ...] | None = None) -> Iterator[Path]:
    """Every regular file below ``root``; with ``suffixes`` (lower case, e.g. ``(".dcm",)``) only those ending so.

    A link that points nowhere is reported as a warning and skipped.
    """
    for folder, _, files in _walk(root):
        for name in files:
            if suffixes is not None and not name.lower().endswith(suffixes):
                continue
            path = folder / name
            if path.is_file():
                yield path
            elif path.is_symlink() and not path.exists():
                print(f"warning: skipping {path}: the link points to nothing ({os.readlink(path)})")


def subfolders(root: str | os.PathLike, name: str) -> list[Path]:
    """Every folder called ``name`` below ``root``, sorted."""
    return sorted(folder / d for folder, dirs, _ in _walk(root) for d in dirs if d == name)
