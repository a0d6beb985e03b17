"""Writing files so that nothing the user made is ever left half-written."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
