"""`ksir-run`: the Hydra app. One job, or a sweep with `-m` (any config key, any launcher)."""

from __future__ import annotations

import os
import sys
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ksir.config import CONF_DIR
from ksir.errors import ConfigError


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> Any:
    from ksir.run import execute  # heavy imports after Hydra parsed the command line (fast --help)

    try:
        rec = execute(cfg)
    except ConfigError as e:
        if HydraConfig.get().mode == RunMode.RUN:  # one job: one line, exit 2 (no Hydra banner)
            print(e, file=sys.stderr)
            sys.exit(2)
        raise  # in a sweep the job is recorded as failed and the others go on
    # A small summary for the sweeper's end-of-sweep table (must pickle across launchers).
    return {"status": rec["status"], "skipped": rec.get("skipped", False), "run_key": rec["run_key"],
            "val_loss": rec.get("metrics", {}).get("val_loss")}


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # ksir prints its own progress lines
    _app()


if __name__ == "__main__":
    main()
