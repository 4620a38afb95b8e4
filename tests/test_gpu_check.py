"""`make gpu-check` (scripts/gpu_check.sh): one call that fits the 10 minutes a GPU machine is lent for, made of
commands that exist, and on a machine without CUDA one line and nothing written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ksir.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "gpu_check.sh"


def _plan() -> list[tuple[str, int, str]]:
    out = subprocess.run(["bash", str(SCRIPT), "--plan"], capture_output=True, text=True, check=True).stdout
    rows = [re.match(r"(\S+)\s+(\d+)s\s+(.*)", line) for line in out.splitlines() if not line.startswith("total")]
    return [(m[1], int(m[2]), m[3]) for m in rows if m]


def test_the_parts_fit_one_ten_minute_call_and_name_what_exists():
    plan = _plan()
    assert {p[0] for p in plan} >= {"pytest-gpu", "bench-quant", "bench-train", "bench-deploy"}
    assert sum(p[1] for p in plan) <= 600 - 30  # the parts' limits, with room for start-up and the copy back
    studies = {name.removeprefix("study-") for name, _, _ in plan if name.startswith("study-")}
    gpu_studies = {p.parent.name for p in (REPO_ROOT / "experiments").glob("*/study.yaml")
                   if "gpu" in p.read_text().split("hardware:", 1)[1].splitlines()[0]}
    assert studies == gpu_studies  # every GPU study, and nothing else
    for name, _, cmd in plan:
        if "benchmarks/" in cmd:  # the script exists and takes every option the plan passes
            script = REPO_ROOT / re.search(r"benchmarks/\S+\.py", cmd)[0]
            for opt in re.findall(r"(--[a-z-]+)", cmd):
                assert f'"{opt}"' in script.read_text(), f"{name}: {script.name} has no {opt}"


def test_without_cuda_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible: `make gpu-check` itself is the check here")
    out = tmp_path / "gc"
    r = subprocess.run(["bash", str(SCRIPT), str(out)], capture_output=True, text=True,
                       env={"PY": sys.executable, "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "no CUDA device" in r.stderr
    assert not Path(out).exists()
