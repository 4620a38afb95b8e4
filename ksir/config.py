"""A job's config composed exactly as `ksir-run` composes it (real Hydra), for notebooks and tests.

Parsing and validating it is `ksir.spec.JobSpec.from_config`; its identity is `ksir.identity.run_key`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ksir.paths import CONF_DIR

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from ksir.spec import JobSpec

__all__ = ["CONF_DIR", "compose_config", "compose_spec"]


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    from hydra import compose, initialize_config_dir

    from ksir import resolvers  # noqa: F401 - the resolvers the config uses

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def compose_spec(overrides: list[str] | None = None, check_env: bool = True) -> JobSpec:
    """A validated JobSpec (and, unless check_env=False, one this machine can run: ksir.preflight)."""
    from ksir import preflight
    from ksir.spec import JobSpec

    spec = JobSpec.from_config(compose_config(overrides))
    return preflight.check(spec) if check_env else spec
