"""One error type for bad user input, so every entry point can fail with one clear line."""

from __future__ import annotations

from collections.abc import Iterable

from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException, ValueError):
    """A config value that cannot run. Raised before any model is built or data is read.

    A CompactHydraException, so that Hydra prints it as one line, without a traceback."""

    def __init__(self, key: str, value: object, allowed: Iterable[object] | str | None = None, why: str = ""):
        self.key, self.value = key, value
        msg = f"invalid {key}={value!r}"
        if why:
            msg += f": {why}"
        if allowed is not None:
            allowed_s = allowed if isinstance(allowed, str) else ", ".join(str(a) for a in allowed)
            msg += f" (allowed: {allowed_s})"
        super().__init__(msg)

    def within(self, context: str) -> ConfigError:
        """The same error, its one line followed by where it was found (`[in sweep job: ...]`)."""
        err = ConfigError(self.key, self.value)
        err.args = (f"{self} [{context}]",)
        return err
