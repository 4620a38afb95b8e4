"""Where ksir's own files are (configs), for the CLI, the sweeper and `compose_config`."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
