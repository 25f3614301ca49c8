"""A pydantic `ValidationError` as one line. The product reports bad input in one line
naming the field; pydantic's own text is a block of lines per error, each with a link. Here,
in the package every other one may import, so that session manifests and records, profiles,
fast-path and training configs, registry cards and MQTT messages all say it the same way."""

from __future__ import annotations

from pydantic import ValidationError

_SCALARS = (str, int, float, bool, type(None))


def first_problem(e: ValidationError) -> str:
    """`field.sub: what is wrong (got X)`, and `(and N more)` when there are others."""
    errors = e.errors(include_url=False)
    if not errors:
        return " ".join(str(e).split())
    first = errors[0]
    where = ".".join(str(p) for p in first["loc"])
    # A validator's own message already says what is wrong; pydantic prefixes its kind.
    msg = " ".join(str(first["msg"]).removeprefix("Value error, ").split())
    if first["type"] == "extra_forbidden":
        msg = "not a known field"
    elif first["type"] != "missing" and isinstance(first.get("input"), _SCALARS):
        msg += f" (got {_short(first['input'])})"
    text = f"{where}: {msg}" if where else msg
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more)"
    return text


def one_line(e: Exception) -> str:
    """Any error's text on one line: a ValidationError as `first_problem`, others as is
    (ValidationError is a ValueError, so handlers catching both need this)."""
    return first_problem(e) if isinstance(e, ValidationError) else " ".join(str(e).split())


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
