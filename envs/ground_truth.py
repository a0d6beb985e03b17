"""Ground truth on demand: a step's ``info`` dict whose costly entries are computed when read.

Projecting the keypoints into every camera and casting their occlusion rays costs more than the
physics of a step (Reach: ~45 µs against ~15 µs). A training loop rarely reads them, so kp3d's envs
return them in a :class:`GroundTruthInfo`: a ``dict`` that computes its deferred entries the first
time one of them is read (see the class for the exact rules). To every reader it is the dict it
always was.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

DEFERRED_KEYS = ("keypoints_world", "keypoints_pixels", "keypoints_depth", "keypoints_visible")
"""The entries of a step's ``info`` that are computed on first read."""


class Deferred:
    """A computation of the deferred entries, run at most once and shared by the copies of one
    ``info``: the first dict to take the values gets them, later ones get copies (so that no two
    dicts share an array)."""

    __slots__ = ("_compute", "_taken", "_values")

    def __init__(self, compute: Callable[[], dict[str, Any]]) -> None:
        self._compute: Callable[[], dict[str, Any]] | None = compute
        self._values: dict[str, Any] | None = None
        self._taken = False

    def take(self) -> dict[str, Any]:
        if self._values is None:
            assert self._compute is not None
            self._values, self._compute = self._compute(), None
        if self._taken:
            return copy.deepcopy(self._values)
        self._taken = True
        return self._values


class GroundTruthInfo(dict):
    """A step's ``info``, whose :data:`DEFERRED_KEYS` are computed when first needed.

    The deferred entries are filled in (all at once, exactly as an eager computation would have
    given them) the first time one of them is read (``info[key]``, ``info.get(key)``), or the dict
    is iterated, listed, compared, printed, copied, pickled or merged into another dict
    (``{**info}``, ``dict(info)``). Until then ``key in info`` and ``len(info)`` already count
    them. A value set by the caller for a deferred key before that is kept.

    The computation works from a snapshot taken at the step (keypoints, camera matrices, joint and
    mocap positions), so reading the info of an earlier step after the env has moved on gives that
    step's values. ``copy.copy``, ``info.copy()`` and pickles are plain, complete dicts; deep
    copies (SB3's ``DummyVecEnv`` deep-copies every info) stay deferred and share one computation.
    """

    __slots__ = ("_pending",)

    def __init__(self, values: dict[str, Any], deferred: Deferred | None) -> None:
        super().__init__(values)
        self._pending = deferred

    def _resolve(self) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            for key, value in pending.take().items():
                dict.setdefault(self, key, value)

    def _is_deferred(self, key: Any) -> bool:
        return self._pending is not None and key in DEFERRED_KEYS

    # -- reads of one key -------------------------------------------------------------------------
    def __missing__(self, key: Any) -> Any:
        if self._is_deferred(key):
            self._resolve()
            return dict.__getitem__(self, key)
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        if self._is_deferred(key):
            self._resolve()
        return dict.get(self, key, default)

    def __contains__(self, key: object) -> bool:
        return dict.__contains__(self, key) or self._is_deferred(key)

    def __len__(self) -> int:
        missing = 0
        if self._pending is not None:
            missing = sum(not dict.__contains__(self, key) for key in DEFERRED_KEYS)
        return dict.__len__(self) + missing

    def clear(self) -> None:
        self._pending = None
        dict.clear(self)

    # -- copies ---------------------------------------------------------------------------------
    def __reduce__(self) -> tuple[type, tuple[dict[str, Any]]]:
        self._resolve()
        return dict, (dict(dict.items(self)),)

    def __reduce_ex__(self, protocol: Any) -> tuple[type, tuple[dict[str, Any]]]:
        return self.__reduce__()

    def __deepcopy__(self, memo: dict[int, Any]) -> GroundTruthInfo:
        values = copy.deepcopy(dict(dict.items(self)), memo)
        return GroundTruthInfo(values, self._pending)

    def __eq__(self, other: object) -> bool:
        self._resolve()
        if isinstance(other, GroundTruthInfo):
            other._resolve()
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = None  # type: ignore[assignment]


def _resolving(name: str) -> Callable[..., Any]:
    method = getattr(dict, name)

    def resolved(self: GroundTruthInfo, *args: Any, **kwargs: Any) -> Any:
        self._resolve()
        return method(self, *args, **kwargs)

    resolved.__name__ = resolved.__qualname__ = name
    resolved.__doc__ = method.__doc__
    return resolved


# Everything else that reads the whole dict (or removes from it) computes the deferred entries
# first. Overriding __iter__ also makes CPython merge this dict into others ({**info}, dict(info),
# f(**info)) through keys() and __getitem__ instead of copying its storage.
_WHOLE_DICT_METHODS: Iterable[str] = (
    "__iter__",
    "__reversed__",
    "__repr__",
    "__or__",
    "__ror__",
    "__delitem__",
    "keys",
    "values",
    "items",
    "copy",
    "pop",
    "popitem",
    "setdefault",
)
for _name in _WHOLE_DICT_METHODS:
    setattr(GroundTruthInfo, _name, _resolving(_name))
