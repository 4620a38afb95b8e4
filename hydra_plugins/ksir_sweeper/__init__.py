"""ksir's sweeper (a Hydra plugin, hence this namespace): Hydra's basic sweeper, plus: every job of a sweep is validated before the first one runs.

Without this, a typo in the 30th value of a sweep would surface only after 29 jobs of compute.
The check composes each job's config exactly as the launcher will and runs `ksir.config.validate`.
"""

from __future__ import annotations

from collections.abc import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import OmegaConf

from ksir.config import validate
from ksir.errors import ConfigError


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)
        assert self.hydra_context is not None and self.config is not None
        for overrides in batch:
            full = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            # The job sees its config without the `hydra` node (whose job-time values are unset here).
            cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
            try:
                validate(cfg)
            except ConfigError as e:
                raise ConfigError(e.key, e.value, why=f"{e} [in sweep job: {' '.join(overrides)}]") from None
