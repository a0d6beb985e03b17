"""The config reference (docs/config.md), generated from the config dataclasses: every key of a
training config with its type, default, valid range and the docstring written under its field.

Regenerate it after changing a field::

    python -m agents.config_reference > docs/config.md

A test checks that the page matches the code.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import textwrap
import typing
from typing import Any

from agents import config as config_module
from agents.config_checks import RANGES

SECTIONS: tuple[tuple[str, type], ...] = (
    ("", config_module.TrainConfig),
    ("perception", config_module.PerceptionConfig),
    ("perception.pretrain", config_module.PretrainRecipe),
    ("ppo", config_module.PPOConfig),
    ("sac", config_module.SACConfig),
    ("unsupervised", config_module.UnsupervisedConfig),
    ("eval", config_module.EvalConfig),
    ("video", config_module.VideoConfig),
)
"""Each section's key prefix and dataclass, in the order of the page."""


def field_docstrings(cls: type) -> dict[str, str]:
    """The string literal written under each field of a dataclass (its attribute docstring)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = inspect.cleandoc(following.value.value)
    return docs


def _type_name(hint: Any) -> str:
    text = str(hint) if not isinstance(hint, type) else hint.__name__
    text = text.replace("typing.", "").replace("agents.config.", "").replace("NoneType", "null")
    return text.replace(" | ", " or ")


def _default(spec: dataclasses.Field) -> str:
    if spec.default is not dataclasses.MISSING:
        value = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        value = spec.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return "(section)"
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value!r}`".replace("'", "")


def _one_line(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def config_reference() -> str:
    """The Markdown page."""
    lines = [
        "# Training config reference",
        "",
        "Every key of a `kp3d train` config (`configs/*.yaml`), generated from `agents/config.py`",
        "by `python -m agents.config_reference`. Keys left out take the default; an unknown key,",
        "a value of the wrong type or out of its range is an error naming the key",
        "(`agents/config_checks.py`). Override any key with `--set section.key=value`.",
        "",
    ]
    for prefix, cls in SECTIONS:
        hints = typing.get_type_hints(cls)
        docs = field_docstrings(cls)
        title = f"`{prefix}`" if prefix else "Top level"
        lines += [f"## {title}", "", _one_line(inspect.getdoc(cls) or ""), ""]
        lines += ["| key | type | default | valid | meaning |", "|---|---|---|---|---|"]
        for spec in dataclasses.fields(cls):
            key = f"{prefix}.{spec.name}" if prefix else spec.name
            valid = RANGES.get(key) or RANGES.get(f"{key}[]")
            lines.append(
                f"| `{key}` | {_type_name(hints[spec.name])} | {_default(spec)} | "
                f"{'' if valid is None else valid} | {_one_line(docs.get(spec.name, ''))} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(config_reference(), end="")
