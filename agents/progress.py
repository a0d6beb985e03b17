"""Progress bars of long commands (``kp3d dataset``, ``kp3d pretrain``): tqdm when installed."""

from __future__ import annotations

import contextlib
from typing import Any


class SilentProgress:
    """What :func:`progress_bar` returns when disabled: the tqdm calls the commands use, as
    no-ops."""

    def update(self, count: int = 1) -> None:
        pass

    def set_postfix(self, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(
    total: int,
    initial: int = 0,
    unit: str = "it",
    description: str | None = None,
    enabled: bool = True,
) -> Any:
    """A tqdm bar on stderr counting to ``total`` from ``initial`` (a resumed job), or a
    :class:`SilentProgress` when ``enabled`` is false or tqdm is not installed."""
    if enabled:
        with contextlib.suppress(ImportError):
            from tqdm.auto import tqdm

            return tqdm(total=total, initial=initial, unit=unit, desc=description)
    return SilentProgress()


__all__ = ["SilentProgress", "progress_bar"]
