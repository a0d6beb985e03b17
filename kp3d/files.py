"""Writing files so that nothing the user made is ever left half-written, and clearing the
temporary files of writers that were killed."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

PARTIAL_FILE = re.compile(r"\..+\.(\d+)\.partial(\.[^.]+)?")
"""Name of :func:`atomic_write`'s temporary files: ``.{stem}.{pid}.partial{suffix}``."""


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return False
    return True


def remove_stale_partials(directory: Path) -> list[Path]:
    """Delete :func:`atomic_write`'s temporary files in ``directory`` whose writer is dead (a
    SIGKILL leaves them: no ``finally`` runs). Files of live writers are kept.

    Returns:
        The files removed.
    """
    removed = []
    if not directory.is_dir():
        return removed
    for path in directory.iterdir():
        match = PARTIAL_FILE.fullmatch(path.name)
        if match and path.is_file() and not process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(path: Path, write: Callable[[str], Any]) -> None:
    """Call ``write(temporary_path)``, then move the result onto ``path`` in one step.

    The temporary file lies in ``path``'s directory (so that ``os.replace`` is atomic) and keeps
    ``path``'s suffix (writers such as SB3 and imageio pick their format from it). A failed or
    interrupted write leaves ``path`` as it was and no temporary file behind.

    Raises:
        OSError: also when ``write`` produced an empty file.
    """
    temporary = str(path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}"))
    try:
        write(temporary)
        if Path(temporary).stat().st_size == 0:
            raise OSError(f"writing {path} produced an empty file")
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)
