"""The software and machine a result came from: recorded in every run record (`environment`), so that two
machines that disagree on a number can be compared field by field instead of guessed at.

Training is not bit-identical across machines: kernels differ by instruction set (ATen's CPU capability),
thread count, library version, and the embedded corpus *is* the running Python's standard library. Each of
those is a field here. `python -m ksir.environment` prints this process's environment;
`python -m ksir.environment A B` (two record files, or two results folders) prints what differs between them.

Nothing here imports torch: its fields (kernel capability, threads, CUDA) are filled only where a job has
imported it already, so the record of a job carries them and `--help` stays fast.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from ksir.paths import REPO_ROOT

# The libraries whose versions move numbers (kernels, tokenizers, data loading, fitting) or the record itself.
KEY_PACKAGES = ("torch", "transformers", "tokenizers", "datasets", "pyarrow", "pytorch-lightning", "hydra-core",
                "omegaconf", "numpy", "scipy", "pandas", "wandb", "lm-eval", "accelerate", "unit-scaling",
                "bitsandbytes", "torchao", "hqq")
# Environment variables that change which kernels run or how many threads they use.
NUMERIC_VARS = ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "CUBLAS_WORKSPACE_CONFIG", "CUDA_VISIBLE_DEVICES")
LOCK_FILE = REPO_ROOT / "constraints.txt"  # `make lock` writes it; `make setup` installs from it


def read_lock(path: Path = LOCK_FILE) -> dict[str, str]:
    """{normalised package name: version} of a constraints file (`name==version` lines; comments skipped)."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalise(name)] = version.strip()
    return pins


def normalise(name: str) -> str:
    """PEP 503 name: `PyYAML`, `pytorch_lightning` and `lm_eval` compare equal to their index names."""
    return "-".join(name.replace("_", "-").replace(".", "-").lower().split("-"))


def public(version: str) -> str:
    """A version without its local label: `2.13.0+cpu` and `2.13.0+cu128` are one release of torch."""
    return version.split("+", 1)[0]


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def lock_mismatches(path: Path = LOCK_FILE) -> dict[str, dict[str, str | None]]:
    """Locked packages whose installed version differs from the lock (None: not installed). Empty: in step."""
    out = {}
    for name, want in read_lock(path).items():
        have = installed_version(name)
        if have is not None and public(have) != public(want):
            out[name] = {"locked": want, "installed": have}
    return out


def lock_problems(pyproject: Path = REPO_ROOT / "pyproject.toml", lock: Path = LOCK_FILE,
                  makefile: Path = REPO_ROOT / "Makefile") -> list[str]:
    """Where the lock disagrees with what it locks: a dependency of pyproject.toml (any extra) that the lock
    leaves out or pins outside its range, or a Makefile torch pin other than the lock's. Empty: consistent."""
    import re
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads(pyproject.read_text())["project"]
    reqs = [*project.get("dependencies", []), *(r for extra in project.get("optional-dependencies", {}).values()
                                                  for r in extra)]
    pins, problems = read_lock(lock), []
    for text in reqs:
        req = Requirement(text)
        name = normalise(req.name)
        if name == normalise(project["name"]):
            continue  # an extra naming another extra of ksir itself
        if name not in pins:
            problems.append(f"{text!r} (pyproject.toml) is not pinned in {lock.name}: run `make lock`")
        elif not req.specifier.contains(pins[name], prereleases=True):
            problems.append(f"{text!r} (pyproject.toml) excludes {name}=={pins[name]} pinned in {lock.name}")
    m = re.search(r"^TORCH\s*\?=\s*torch==(\S+)", makefile.read_text(), re.M)
    if m and pins.get("torch") != m.group(1):
        problems.append(f"the Makefile installs torch=={m.group(1)}, {lock.name} pins torch=={pins.get('torch')}")
    return problems


@functools.lru_cache(maxsize=1)
def _static() -> dict[str, Any]:
    """What cannot change within a process: interpreter, machine, installed versions, the lock, the code."""
    lock: dict[str, Any] | None = None
    if LOCK_FILE.exists():
        lock = {"sha256": hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:16], "mismatches": lock_mismatches()}
    return {
        "python": platform.python_version(), "implementation": platform.python_implementation(),
        "os": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(), "cpus": os.cpu_count(),
        "packages": {p: installed_version(p) for p in KEY_PACKAGES},
        "lock": lock, "git": git_state(),
    }


# The instruction-set extensions that decide which CPU kernels torch, BLAS and oneDNN pick.
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "avx512_fp16", "amx_bf16", "amx_int8", "amx_tile")


def cpu_model() -> dict[str, Any]:
    """The CPU's model name and its kernel-relevant instruction sets (Linux; elsewhere the name only)."""
    name, flags = None, []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "model name" and name is None:
                name = value
            elif key == "flags":
                have = set(value.split())
                flags = [f for f in ISA_FLAGS if f in have]
                break
    except OSError:
        pass
    return {"model": name or platform.processor() or None, "isa": flags}


def git_state(folder: Path = REPO_ROOT) -> dict[str, Any] | None:
    """{commit, dirty} of the checkout ksir runs from; None outside a git checkout (an installed wheel)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=folder)
        if commit.returncode != 0 or not commit.stdout.strip():
            return None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, timeout=10, cwd=folder)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip()) if status.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit() -> str | None:
    return (_static()["git"] or {}).get("commit")


def _torch() -> dict[str, Any] | None:
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    out = {"cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "cuda": torch.version.cuda, "deterministic": torch.are_deterministic_algorithms_enabled()}
    if torch.cuda.is_available():
        out.update(device=torch.cuda.get_device_name(0), cudnn=torch.backends.cudnn.version())
    return out


def collect(data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """This process's environment (plus the fingerprints of a job's data, when given): a record's
    `environment` field."""
    env = {**_static(), "torch": _torch(), "variables": {k: os.environ[k] for k in NUMERIC_VARS if k in os.environ}}
    if data is not None:
        env["data"] = dict(data)
    return env


# ----------------------------------------------------------------------------- comparing two environments


def differences(a: Mapping[str, Any], b: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, a's value, b's value) for every leaf that differs between two environments."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, Mapping) and isinstance(vb, Mapping):
            out += differences(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append((f"{prefix}{k}", va, vb))
    return out


def environment_of(path: str | Path) -> dict[str, Any]:
    """The environment of a record file, or of the newest record in a results folder that has one."""
    p = Path(path).expanduser()
    if p.is_dir():
        recs = sorted(p.glob("*.json"), key=lambda f: f.stat().st_mtime, reverse=True)
        for f in recs:
            env = json.loads(f.read_text()).get("environment")
            if env:
                return env
        raise SystemExit(f"{p}: no record with an environment (records written before ksir recorded it)")
    if not p.exists():
        raise SystemExit(f"{p}: no such record file or results folder")
    env = json.loads(p.read_text()).get("environment")
    if not env:
        raise SystemExit(f"{p}: this record has no environment (written before ksir recorded it)")
    return env


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    usage = ("usage: python -m ksir.environment          this process's environment (JSON)\n"
             "       python -m ksir.environment A B      what differs between two records (or results folders)")
    if args in (["-h"], ["--help"]):
        print(usage)
        return 0
    if len(args) not in (0, 2):
        print(usage, file=sys.stderr)
        return 2
    if not args:
        print(json.dumps(collect(), indent=2, sort_keys=True))
        return 0
    diffs = differences(environment_of(args[0]), environment_of(args[1]))
    print("the two environments are identical" if not diffs else
          "\n".join(f"{key}: {va!r} != {vb!r}" for key, va, vb in diffs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
