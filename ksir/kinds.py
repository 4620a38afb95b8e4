"""The kinds of job: one registry entry each, carrying everything that differs between them (lm-evaluation-
harness style: one registration holds an entry and all its metadata).

An entry says how a job of its kind is checked (its values, then what it needs from the machine), what its
identity is, which jobs it needs first and with which overrides a sweep launches them, how it is described,
how it runs, and which sections of the config it trains with. Nothing outside an entry branches on a job's
name: code asks `kind(spec)`.

Entries name their functions as "module:function", resolved when called (as Hydra names its targets), so this
module imports nothing of ksir's: the entry is the one place to read a kind, and the import graph stays
acyclic although identity, checks and running live in the modules they belong to.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobKind:
    name: str
    key_prefix: str  # its run keys: `t-…`, `q-…`
    identity: str  # JobSpec -> the dict its run key hashes
    check: str  # JobSpec -> None: the values this kind needs (ConfigError otherwise); part of construction
    preflight: str  # JobSpec -> None: what this kind needs from the machine (ksir.preflight)
    requires: str  # JobSpec -> [JobSpec]: jobs to run first (the train job of its base model)
    describe: str  # JobSpec -> a short label: `llama-xs train`, `llama-m quantize int4 b64 rtn`
    run: str  # (JobSpec, W&B run or None) -> the record's job-specific fields
    trains_with_qat: bool  # the job's own `qat` section applies to what it trains (its learning rate, ...)
    dependency_overrides: tuple[str, ...] = ()  # appended to a job's overrides to launch its dependency

    def call(self, what: str, *args: Any) -> Any:
        module, fn = getattr(self, what).split(":")
        return getattr(importlib.import_module(module), fn)(*args)


KINDS: dict[str, JobKind] = {k.name: k for k in (
    JobKind("train", "t", identity="ksir.identity:train_identity", check="ksir.spec:check_train",
            preflight="ksir.preflight:check_train", requires="ksir.jobs:train_requires",
            describe="ksir.jobs:describe_train", run="ksir.run:run_train", trains_with_qat=True,
            dependency_overrides=("qat.enabled=false",)),
    JobKind("quantize", "q", identity="ksir.identity:quantize_identity", check="ksir.spec:check_quantize",
            preflight="ksir.preflight:check_quantize", requires="ksir.jobs:quantize_requires",
            describe="ksir.jobs:describe_quantize", run="ksir.run:run_quantize", trains_with_qat=False),
)}
JOBS = tuple(KINDS)


def kind(name: str) -> JobKind:
    """The entry of a job kind; an unknown name is a one-line ConfigError."""
    if name not in KINDS:
        from ksir.errors import ConfigError

        raise ConfigError("job", name, list(KINDS))
    return KINDS[name]
