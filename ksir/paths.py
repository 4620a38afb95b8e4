"""Where ksir's own files are (configs, the studies of experiments/), for the CLIs, the sweeper and
`compose_config`. ksir runs from its checkout (`make setup` installs it editable)."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = str(REPO_ROOT / "conf")
