"""Write constraints.txt: every package of a freshly resolved environment, pinned (`make lock` calls this).

Usage: python scripts/lock.py VENV_PYTHON > constraints.txt

The lock pins releases, not builds: a local label such as torch's `+cpu` is dropped, so that
`make setup TORCH=torch` on a GPU machine installs the same torch release as a CUDA build.
"""

from __future__ import annotations

import datetime
import platform
import subprocess
import sys


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    python = sys.argv[1]
    frozen = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True,
                            capture_output=True, text=True).stdout
    version = subprocess.run([python, "-c", "import platform; print(platform.python_version())"], check=True,
                             capture_output=True, text=True).stdout.strip()
    pins = sorted((line.split("+", 1)[0] for line in frozen.splitlines() if "==" in line),
                  key=lambda s: s.split("==", 1)[0].lower())
    print("# The environment ksir's results are produced and tested in: `make setup` installs with these pins.\n"
          "# Upgrade every package to its newest release (then rerun `make test`): make lock\n"
          f"# Resolved {datetime.date.today().isoformat()} with Python {version} on {platform.system()} "
          f"{platform.machine()}.")
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
