"""Quiet by default: a ksir process prints its own lines (what a job is, its progress, its result, where it
went), not the banners, tips, progress bars and deprecation notices of the libraries under it.

`-v` / `--verbose` on ksir-run or ksir-repro (or `KSIR_VERBOSE=1`, which launched jobs inherit) shows
everything. Warnings that say something about the user's job (a failed W&B start, a storage problem, a
library's real error) are WARNING or above and are never silenced here; only INFO chatter and the specific
notices listed below are.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "KSIR_VERBOSE"
VERBOSE_FLAGS = ("-v", "--verbose")

# Loggers whose INFO lines are another library's narration of what ksir already says in its own words.
CHATTY = (
    "hydra._internal.core_plugins.basic_launcher",  # "Launching 1 jobs locally" + "#0 : overrides", per job
    "hydra_plugins.hydra_joblib_launcher", "hydra_plugins.hydra_submitit_launcher",
    "pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric",  # GPU/TPU lines, tips, stops
    "lm_eval", "lm-eval",  # task building and request counts
    "datasets", "huggingface_hub", "transformers", "urllib3", "filelock", "fsspec",
)
# Notices about the libraries' own futures or about an environment the user did not ask for (regexes).
NOTICES = (
    r"The `srun` command is available on your system but is not used",  # Lightning on a SLURM login node
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",  # torch's pytree, through Lightning
    r".*past_key_values.*",  # transformers' cache-format notices while evaluating
    r".*does not have many workers which may be a bottleneck",  # Lightning: ksir's loaders are in-memory
    r".*Consider setting `persistent_workers=True`",
    r".*The number of training batches .* is smaller than the logging interval",
)


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def take_flag(args: list[str]) -> list[str]:
    """`args` without -v/--verbose; when one was there, this process and the jobs it launches are verbose."""
    kept = [a for a in args if a not in VERBOSE_FLAGS]
    if len(kept) != len(args):
        os.environ[VERBOSE_ENV] = "1"
    return kept


def apply() -> None:
    """Silence the chatter above unless verbose. Cheap and idempotent: called at each entry point and again
    where a library that resets its logger level (Lightning on import) is about to talk."""
    if verbose():  # and undo an earlier quiet call of this process (ksir-run called in-process twice)
        for name in _SILENCED:
            logging.getLogger(name).setLevel(logging.NOTSET)
        _SILENCED.clear()
        if "TQDM_DISABLE" in _SILENCED_ENV:  # only if this module set it, never the user's own
            os.environ.pop("TQDM_DISABLE", None)
            _SILENCED_ENV.clear()
        return
    if "TQDM_DISABLE" not in os.environ:  # lm-eval's and datasets' progress bars (tqdm >= 4.66)
        os.environ["TQDM_DISABLE"] = "1"
        _SILENCED_ENV.add("TQDM_DISABLE")
    for name in CHATTY:
        logger = logging.getLogger(name)
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
            _SILENCED.add(name)
    for pattern in NOTICES:
        warnings.filterwarnings("ignore", message=pattern)


_SILENCED: set[str] = set()  # loggers this module quietened
_SILENCED_ENV: set[str] = set()  # environment variables this module set
