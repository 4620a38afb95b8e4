"""Config groups as dataclasses: a Hydra group's mapping -> a typed dataclass, unknown keys rejected.

Nested dataclass fields (e.g. `quant.gptq`, `qat.distill`) are built from their sub-mappings, so
a typo anywhere fails with the full key and the allowed names before any compute.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from ksir.errors import ConfigError

T = TypeVar("T")
LIST_FIELDS = ("include", "exclude", "codebook")


def from_mapping(cls: type[T], m: Mapping[str, Any] | Any, prefix: str) -> T:
    """`cls(**m)` with nested dataclasses built recursively; `prefix` names the group in errors."""
    if m is None:
        return cls()
    if not isinstance(m, Mapping):
        from omegaconf import OmegaConf

        m = OmegaConf.to_container(m, resolve=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in dict(m).items():
        if key not in fields:
            raise ConfigError(f"{prefix}.{key}", value, list(fields), "unknown key")
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub):
            value = from_mapping(sub, value or {}, f"{prefix}.{key}")
        elif key in LIST_FIELDS and value is not None:
            value = list(value)
        kwargs[key] = value
    return cls(**kwargs)
