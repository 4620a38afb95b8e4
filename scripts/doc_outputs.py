"""Regenerate the output the docs show under `$ command` lines (```text blocks of README.md and docs/*.md):
each command runs in a scratch folder as a new user would run it, and the lines under it become what it
printed. tests/test_docs_commands.py fails when a shown output is no longer what the command prints.

    python scripts/doc_outputs.py           # rewrite the blocks in place
    python scripts/doc_outputs.py --check   # exit 1 and name the blocks that differ
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# docs/demo-transcript.md is a whole `make demo` on a fresh clone: scripts/demo_transcript.sh writes it.
DOCS = [ROOT / "README.md", *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "demo-transcript.md")]
BLOCK = re.compile(r"```text\n(\$ [^\n]+)\n(.*?)```", re.S)


def run(command: str) -> str:
    """What `command` prints (stdout then stderr), run in an empty folder with W&B offline and no login."""
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "HOME": scratch, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
        env.pop("WANDB_API_KEY", None)
        bin_dir = Path(sys.executable).parent
        argv = shlex.split(command)
        r = subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=scratch, env=env, capture_output=True,
                           text=True, timeout=600)
        out = (r.stdout + r.stderr).replace(scratch, ".").rstrip()
        return out + f"\n(exit status {r.returncode})"


def regenerate(text: str) -> str:
    return BLOCK.sub(lambda m: f"```text\n{m.group(1)}\n{run(m.group(1).removeprefix('$ '))}\n```", text)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true")
    args = p.parse_args()
    stale = []
    for doc in DOCS:
        text = doc.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(doc.relative_to(ROOT))
            if not args.check:
                doc.write_text(new)
    verb = "differ" if args.check else "rewritten"
    print(f"{len(stale)} file(s) {verb}: {', '.join(map(str, stale)) or '-'}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
