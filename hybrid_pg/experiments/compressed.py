"""Text files stored plain (``x.csv``, as training writes them) or gzip-compressed (``x.csv.gz``, as
committed results keep the large ones; the policy is in ``docs/results/README.md``).

Every reader of a run's CSV files opens them through :func:`open_text`, which takes whichever of the
two is there, so a report reads a compressed run exactly as it read the plain one.
:func:`gzip_file` compresses deterministically: the same input gives the same bytes (no timestamp
and no file name in the gzip header, a fixed level), so recompressing changes nothing in git.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Optional, TextIO, Union

__all__ = ["DAMAGED_FILE_ERRORS", "GZIP_SUFFIX", "gzip_file", "open_text", "stored"]

GZIP_SUFFIX = ".gz"
#: what reading a stored CSV back through :func:`open_text` raises when the file is damaged: not
#: UTF-8 (UnicodeDecodeError), a truncated gzip (EOFError), a ``.gz`` that is not gzip
#: (gzip.BadGzipFile, an OSError), a CSV the csv module cannot parse (csv.Error)
DAMAGED_FILE_ERRORS = (OSError, EOFError, UnicodeDecodeError, csv.Error)
PathLike = Union[str, Path]


def stored(path: PathLike) -> Optional[Path]:
    """``path`` if it is a file, else ``path.gz`` if that is one, else None."""
    path = Path(path)
    if path.is_file():
        return path
    packed = path.with_name(path.name + GZIP_SUFFIX)
    return packed if packed.is_file() else None


def open_text(path: PathLike) -> TextIO:
    """``path`` (or, when only that exists, ``path.gz``) opened for reading as UTF-8 text with
    universal newlines off, as the csv module wants; FileNotFoundError naming both when neither is there."""
    found = stored(path)
    if found is None:
        raise FileNotFoundError(f"{path}: no such file (nor {Path(path).name}{GZIP_SUFFIX})")
    if found.name.endswith(GZIP_SUFFIX):
        return io.TextIOWrapper(gzip.open(found, "rb"), encoding="utf-8", newline="")
    return found.open(newline="", encoding="utf-8")


def gzip_file(path: PathLike, level: int = 9) -> Path:
    """Replace ``path`` by ``path.gz`` (deterministic bytes; see the module docstring) and return it.

    The compressed file is written beside it under a temporary name, read back and compared with
    the original, and only then renamed into place; the original is removed last, so an interruption
    leaves the plain file (and at worst a stray temporary file), never a half-written ``.gz``."""
    path = Path(path)
    target = path.with_name(path.name + GZIP_SUFFIX)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}{GZIP_SUFFIX}")
    try:
        with path.open("rb") as src, tmp.open("wb") as raw:
            # filename="" and mtime=0: nothing in the header depends on where or when it was written
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=level, mtime=0) as packed:
                shutil.copyfileobj(src, packed)
            raw.flush()
            os.fsync(raw.fileno())
        with gzip.open(tmp, "rb") as check:
            if check.read() != path.read_bytes():
                raise OSError(f"{tmp}: the compressed copy of {path} does not read back the same")
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    path.unlink()
    return target
