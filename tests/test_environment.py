"""The pinned environment and the environment each record carries (so two machines' numbers can be traced)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata

import pytest

from ksir import environment
from ksir.paths import REPO_ROOT


def test_lock_agrees_with_pyproject_and_makefile():
    assert environment.lock_problems() == []


def test_lock_check_names_every_disagreement(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "ksir"\ndependencies = ["numpy>=99", "scipy>=1.0"]\n'
        '[project.optional-dependencies]\nextra = ["not-a-locked-package>=1", "ksir[other]"]\n')
    (tmp_path / "lock.txt").write_text("# comment\nnumpy==2.0.0\nscipy==1.17.1  # trailing\n")
    (tmp_path / "Makefile").write_text("TORCH  ?= torch==2.12.0\n")
    problems = environment.lock_problems(tmp_path / "pyproject.toml", tmp_path / "lock.txt", tmp_path / "Makefile")
    assert len(problems) == 3, problems
    assert "'numpy>=99'" in problems[0] and "numpy==2.0.0" in problems[0]
    assert "'not-a-locked-package>=1'" in problems[1] and "make lock" in problems[1]
    assert "torch==2.12.0" in problems[2] and "torch==None" in problems[2]


def test_installed_packages_are_the_locked_ones():
    """`make setup` installs from the lock; a drifted venv is named package by package (fix: make setup)."""
    assert environment.lock_mismatches() == {}


def _closure(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """Installed distributions that `name[extras]` needs, transitively (markers evaluated here)."""
    from packaging.requirements import Requirement

    seen, todo = set(), [(name, extras)]
    while todo:
        dist_name, ex = todo.pop()
        try:
            dist = metadata.distribution(dist_name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker and not any(req.marker.evaluate({"extra": e}) for e in (*ex, "")):
                continue
            key = environment.normalise(req.name)
            if (key, tuple(sorted(req.extras))) not in seen:
                seen.add((key, tuple(sorted(req.extras))))
                todo.append((req.name, tuple(req.extras)))
    return {k for k, _ in seen}


def test_lock_pins_everything_ksir_needs():
    needed = _closure("ksir", ("dev",)) - {"ksir"}
    assert len(needed) > 50  # torch, transformers, lightning, ... and their dependencies
    assert not needed - set(environment.read_lock()), "not pinned (run make lock)"


def test_record_environment_matches_this_process(trained_tiny):
    import torch

    from ksir.data.blocks import tensors_digest

    env = trained_tiny.record["environment"]
    assert env["python"] == platform.python_version()
    assert env["packages"]["torch"] == torch.__version__
    assert env["torch"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch"]["threads"] == torch.get_num_threads()
    assert env["lock"]["mismatches"] == {}
    # The token digest is the blocks' content, recomputed here from the data the fixture loaded.
    assert env["data"]["tokens"] == tensors_digest(trained_tiny.data.train, trained_tiny.data.validation)
    assert env["data"]["source"] == "embedded" and len(env["data"]["documents"]) == 16


def test_documents_digest_follows_the_text():
    import datasets

    from ksir.data.corpus import documents_digest

    def docs(texts: list[str]) -> datasets.DatasetDict:
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"name": ["a", "b"], "text": texts}),
                                     "validation": datasets.Dataset.from_dict({"name": ["c"], "text": ["z"]})})

    one = documents_digest(docs(["x", "y"]))
    assert documents_digest(docs(["x", "y"])) == one
    assert documents_digest(docs(["x", "y "])) != one  # one character
    assert documents_digest(docs(["xy", ""])) != one  # the same bytes, cut elsewhere


def test_environment_diff_names_what_differs(tmp_path, trained_tiny):
    rec = trained_tiny.record
    other = json.loads(json.dumps(rec, default=str))
    other["environment"]["packages"]["transformers"] = "0.0.1"
    other["environment"]["torch"]["cpu_capability"] = "ZEN9000"  # unlike any real capability
    (tmp_path / "a.json").write_text(json.dumps(rec, default=str))
    (tmp_path / "b.json").write_text(json.dumps(other))
    r = subprocess.run([sys.executable, "-m", "ksir.environment", str(tmp_path / "a.json"), str(tmp_path / "b.json")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("packages.transformers:") and "'0.0.1'" in lines[0]
    assert lines[1].startswith("torch.cpu_capability:") and "'ZEN9000'" in lines[1]
    same = subprocess.run([sys.executable, "-m", "ksir.environment", str(tmp_path / "a.json"), str(tmp_path / "a.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert same.stdout.strip() == "the two environments are identical"
    missing = subprocess.run([sys.executable, "-m", "ksir.environment", str(tmp_path / "a.json"), str(tmp_path / "no")],
                             capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert missing.returncode != 0 and missing.stderr.strip().endswith("no such record file or results folder")


@pytest.mark.parametrize("variables", [{"ATEN_CPU_CAPABILITY": "default"}, {"OMP_NUM_THREADS": "1"}])
def test_kernel_settings_are_recorded(variables):
    """The two settings that move CPU numerics most are visible in the record's environment."""
    code = "import torch, json; from ksir.environment import collect; e = collect(); " \
           "print(json.dumps({'torch': e['torch'], 'variables': e['variables']}))"
    env = {**{k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")},
           **variables}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["variables"] == variables
    if "ATEN_CPU_CAPABILITY" in variables:
        assert got["torch"]["cpu_capability"] == "DEFAULT"
    else:
        assert got["torch"]["threads"] == 1
