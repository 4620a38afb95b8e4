"""How a table is fitted, as one frozen object: `ksir-fit`'s options, `ksir-repro`'s study settings and the
Python API all build a `FitSettings`, and `analyse`, the laws' fits, the ladder and fit.json read it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ksir.quant.vocab import REFERENCE_BITS as _REFERENCE

LOSSES = ("huber", "ols")
ENGINES = ("batched", "scipy")
REFERENCE_BITS = float(_REFERENCE)  # the unquantized precision every other bit-width is compared with


@dataclass(frozen=True)
class FitSettings:
    loss: str = "huber"  # Huber on log residuals (Chinchilla Approach 3), or ordinary least squares
    delta: float = 1e-3  # Huber delta
    n_boot: int = 200  # bootstrap resamples per fit (0: no intervals)
    seed: int = 0  # the bootstrap's seed: resample i always comes from the same draw
    holdout: int = 1  # largest model sizes held out for the extrapolation check
    engine: str = "batched"  # batched LM (all starts / resamples together) or scipy (the reference loop)
    reference: float = REFERENCE_BITS  # bit-width of the baseline every scheme of a base model is compared with
    base: tuple[str, ...] = ()  # table columns that, with N and D, name a base model (besides ksir's own)
    replicate: str | None = "seed"  # column whose values mark replicates of one configuration
    trust_without_heldout: bool = False  # let a law no held-out check can test be trusted on BIC alone
    extrapolate: float = 10.0  # budgets up to this factor beyond the largest run

    def __post_init__(self) -> None:
        from ksir.errors import ConfigError

        if self.loss not in LOSSES:
            raise ConfigError("loss", self.loss, list(LOSSES))
        if self.engine not in ENGINES:
            raise ConfigError("engine", self.engine, list(ENGINES))
        for name, low in (("delta", 0.0), ("reference", 0.0), ("extrapolate", 0.0)):
            if not getattr(self, name) > low:
                raise ConfigError(name, getattr(self, name), f"> {low:g}")
        for name in ("n_boot", "holdout"):
            if getattr(self, name) < 0:
                raise ConfigError(name, getattr(self, name), ">= 0")
        object.__setattr__(self, "base", tuple(self.base))

    def as_dict(self) -> dict[str, Any]:
        """fit.json's `settings` (the names it has always used, plus the new ones)."""
        d = dataclasses.asdict(self)
        return {"loss": d.pop("loss"), "huber_delta": d.pop("delta"), "n_bootstrap": d.pop("n_boot"),
                "heldout_largest_sizes": d.pop("holdout"), **d, "base": list(self.base)}

    def replace(self, **changes: Any) -> FitSettings:
        return dataclasses.replace(self, **changes)
