"""Config groups as dataclasses: a Hydra group's mapping -> a typed dataclass, unknown keys rejected.

Values are coerced to the field's type hint once, here: `4.0` for an int field is 4, `1` for a float
field is 1.0, and anything that is not a number where a number is expected (`eval.sequences=abc`) fails
with the full key and what is allowed. Nested dataclass fields (e.g. `quant.gptq`, `qat.distill`) are
built from their sub-mappings, so a typo anywhere fails before any compute.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, Union

from ksir.errors import ConfigError

T = TypeVar("T")
_NOT = object()  # "this type does not accept the value"


def _coerce_one(tp: Any, value: Any) -> Any:
    """`value` as type `tp`, or _NOT. Booleans are never numbers, and a float is an int only if integral."""
    if tp is Any or tp is object:
        return value
    if tp is type(None):
        return None if value is None else _NOT
    if tp is bool:
        return value if isinstance(value, bool) else _NOT
    if tp is int:
        if isinstance(value, bool):
            return _NOT
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        return _NOT
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return _NOT
        return float(value)
    if tp is str:
        return value if isinstance(value, str) else _NOT
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            return _NOT
        (item,) = typing.get_args(tp)[:1] or (Any,)
        out = [_coerce_one(item, v) for v in value]
        return _NOT if any(v is _NOT for v in out) else out
    if origin is dict or tp is dict:
        return dict(value) if isinstance(value, Mapping) else _NOT
    return value  # an unannotated or exotic type: taken as given


def _describe(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null"}
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (list, tuple):
        return "a list"
    if typing.get_origin(tp) is dict or tp is dict:
        return "a mapping"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` converted to the type hint `tp` (unions tried in order), else ConfigError naming `key`."""
    options = typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,)
    # None first, so that `int | None` keeps null as null; then exact types before lossless conversions.
    for opt in sorted(options, key=lambda o: o is not type(None)):
        out = _coerce_one(opt, value)
        if out is not _NOT:
            return out
    raise ConfigError(key, value, _describe(tp))


@functools.cache
def _schema(cls: type) -> tuple[dict[str, dataclasses.Field], dict[str, Any]]:
    """Fields and resolved type hints of a dataclass, once per class (get_type_hints is slow)."""
    return {f.name: f for f in dataclasses.fields(cls)}, typing.get_type_hints(cls)


def from_mapping(cls: type[T], m: Mapping[str, Any] | Any, prefix: str) -> T:
    """`cls(**m)` with typed values and nested dataclasses built recursively; `prefix` names the group in errors."""
    if m is None:
        return cls()
    if not isinstance(m, Mapping) or hasattr(m, "_metadata"):  # an OmegaConf node: plain Python values
        from omegaconf import OmegaConf

        m = OmegaConf.to_container(m, resolve=True)
    fields, hints = _schema(cls)
    kwargs: dict[str, Any] = {}
    for key, value in dict(m).items():
        if key not in fields:
            raise ConfigError(f"{prefix}.{key}", value, list(fields), "unknown key")
        sub = hints.get(key, Any)
        if dataclasses.is_dataclass(sub):
            kwargs[key] = from_mapping(sub, value or {}, f"{prefix}.{key}")
        else:
            try:
                kwargs[key] = coerce(sub, value, f"{prefix}.{key}")
            except ConfigError as e:
                allowed = fields[key].metadata.get("allowed")  # a field may say more than its type
                raise ConfigError(e.key, value, allowed) if allowed else e from None
    return cls(**kwargs)
