"""Field values read as the Kubernetes API server reads them, so the CLI's verdict is the cluster's.

Pydantic's lax mode turns ``true`` into 1 for an integer, ``"10"`` into 10 and ``"yes"`` into
True; the API server refuses all three against the CRD's types. And the server drops a ``null``
given for a field that is not nullable, so the field takes its default; pydantic refuses it. A
file that ``icechunk-operator validate`` passes must be one ``kubectl apply`` takes, and the
reverse: the models read integers (of 64 bits at most), numbers and booleans strictly, and null
as "not given".
"""

from __future__ import annotations

from types import NoneType, UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic.fields import FieldInfo

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _scalar(annotation: Any) -> tuple[type | None, bool]:
    """The JSON scalar type a field takes (int, float or bool; None for any other), and whether
    it is nullable."""
    args = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    rest = [arg for arg in args if arg is not NoneType]
    nullable = len(rest) < len(args)
    if len(rest) != 1:
        return None, nullable
    only = rest[0]
    if get_origin(only) is Literal:
        values = get_args(only)
        integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        return (int if integers else None), nullable
    return (only if only in (int, float, bool) else None), nullable


def without_dropped_nulls(fields: dict[str, FieldInfo], data: Any) -> Any:
    """``data`` without the nulls the server drops (given for a field that is not nullable and
    has a default), so the field counts as not given: ``virtualization: null`` beside
    ``materialize`` is no virtualization, as the server stores it."""
    if not isinstance(data, dict) or None not in data.values():
        return data
    dropped = set()
    for name, field in fields.items():
        _, nullable = _scalar(field.annotation)
        if not nullable and not field.is_required():
            alias = field.validation_alias
            dropped.update({name, alias if isinstance(alias, str) else name})
    return {key: value for key, value in data.items() if value is not None or key not in dropped}


def read_as_the_server_does(field: FieldInfo, value: Any) -> Any:
    """``value`` for ``field``, or ValueError where the server would refuse its type."""
    kind, nullable = _scalar(field.annotation)
    if value is None:
        if not nullable and not field.is_required():
            return field.get_default(call_default_factory=True)
        return value
    if kind is bool and not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {type(value).__name__} {_short(value)}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"must be an integer, not {type(value).__name__} {_short(value)}")
    if kind is int and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"must fit in 64 bits, as the API server's integers do: {_short(value)}")
    if kind is float and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ValueError(f"must be a number, not {type(value).__name__} {_short(value)}")
    return value


def _short(value: Any) -> str:
    text = repr(value) if isinstance(value, str | int | float | bool) else ""
    return text if len(text) <= 40 else text[:37] + "..."
