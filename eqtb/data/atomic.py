"""Atomic creation of output directories: nothing half-written is ever left at the target path."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False, error: type[Exception] = FileExistsError
                     ) -> Iterator[Path]:
    """Yield a fresh temporary sibling of ``path`` to write into; when the block ends without an
    exception it is renamed to ``path`` (replacing an existing one only if ``overwrite``), otherwise it
    is removed. An existing non-empty ``path`` without ``overwrite`` raises ``error`` naming it."""
    path = Path(path)
    if path.exists() and not (path.is_dir() and not any(path.iterdir())) and not overwrite:
        raise error(f"{path}: already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o755 & ~mask)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
