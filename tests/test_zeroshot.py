"""Zero-shot config validation, the shipped task files and the local task YAMLs (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ksir.errors import ConfigError
from ksir.spec import ZeroShotSpec
from ksir.zeroshot import (
    PAPER_TASKS,
    SHIPPED_DATA_DIR,
    TASK_SPLITS,
    render_task_yamls,
    task_setup,
    validate_zeroshot_config,
)

GOOD = {"enabled": True, "tasks": list(PAPER_TASKS), "limit": 20, "batch_size": 32, "data_dir": "shipped",
        "num_fewshot": 0}
HARNESS_YAML = {"lambada_openai": "lambada/lambada_openai.yaml", "piqa": "piqa/piqa.yaml",
                "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml"}
# The hub datasets' columns and value types (EleutherAI/lambada_openai, baber/piqa, Rowan/hellaswag,
# allenai/winogrande winogrande_xl).
HUB_FIELDS = {
    "lambada_openai": {"text": str},
    "piqa": {"goal": str, "sol1": str, "sol2": str, "label": int},
    "hellaswag": {"ind": int, "activity_label": str, "ctx_a": str, "ctx_b": str, "ctx": str, "endings": list,
                  "source_id": str, "split": str, "split_type": str, "label": str},
    "winogrande": {"sentence": str, "option1": str, "option2": str, "answer": str},
}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def _err(**change) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        validate_zeroshot_config({**GOOD, **change})
    return e.value


def test_valid_configs_pass():
    validate_zeroshot_config(GOOD)
    validate_zeroshot_config({**GOOD, "data_dir": None, "limit": None, "num_fewshot": 5, "batch_size": "auto"})
    validate_zeroshot_config({**GOOD, "tasks": ["piqa"], "data_dir": str(SHIPPED_DATA_DIR)})
    validate_zeroshot_config({**GOOD, "enabled": False, "data_dir": "/nonexistent"})  # not checked when off
    validate_zeroshot_config(None)


def test_unknown_task_names_the_allowed_ones():
    e = _err(tasks=["piqa", "boolq"])
    assert e.key == "eval.zeroshot.tasks" and e.value == "boolq"
    assert "allowed: hellaswag, lambada_openai, piqa, winogrande" in str(e)
    assert "without the local prefix" in str(_err(tasks=["ksir_piqa"]))
    assert _err(tasks=[]).key == "eval.zeroshot.tasks"
    assert _err(tasks="piqa").key == "eval.zeroshot.tasks"  # a string is not a list of tasks
    assert "twice" in str(_err(tasks=["piqa", "piqa"]))


@pytest.mark.parametrize("limit", [0, -3, 1.5, "10", True])
def test_bad_limit(limit):
    e = _err(limit=limit)
    assert e.key == "eval.zeroshot.limit" and "integer >= 1" in str(e)


@pytest.mark.parametrize(("key", "value"), [("batch_size", 0), ("batch_size", "big"), ("num_fewshot", -1),
                                            ("enabled", "yes"), ("data_dir", 3), ("limt", 5)])
def test_other_bad_values(key, value):
    assert _err(**{key: value}).key == f"eval.zeroshot.{key}"


def test_local_data_is_checked_before_compute(tmp_path):
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "validation.jsonl").write_text("{}\n")
    validate_zeroshot_config({**GOOD, "tasks": ["piqa"], "data_dir": str(tmp_path)})
    e = _err(tasks=["piqa", "hellaswag"], data_dir=str(tmp_path))
    assert e.key == "eval.zeroshot.data_dir" and "hellaswag/validation.jsonl" in str(e)
    assert _err(num_fewshot=5).key == "eval.zeroshot.num_fewshot"  # local files have no training split


def test_whole_job_config_and_hydra_group():
    from ksir.config import compose_config

    cfg = compose_config(["eval=zeroshot"])
    default = compose_config([])
    assert set(default.eval) - {"zeroshot"} <= set(cfg.eval)  # eval=zeroshot keeps every eval key
    assert cfg.eval.zeroshot.enabled and list(cfg.eval.zeroshot.tasks) == list(PAPER_TASKS)
    validate_zeroshot_config(cfg)  # a whole job config: its eval.zeroshot is checked
    validate_zeroshot_config(cfg.eval.zeroshot)
    validate_zeroshot_config(cfg.eval)
    validate_zeroshot_config(default)  # no zeroshot block: nothing to check
    cfg.eval.zeroshot.limit = 0
    for c in (cfg, cfg.eval, cfg.eval.zeroshot):
        with pytest.raises(ConfigError, match="eval.zeroshot.limit"):
            validate_zeroshot_config(c)


def test_shipped_files_have_the_hub_fields():
    for task, fields in HUB_FIELDS.items():
        path = SHIPPED_DATA_DIR / task / f"{TASK_SPLITS[task]}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert 20 <= len(rows) <= 40, task
        for r in rows:
            assert set(r) == set(fields), (task, r)
            assert all(isinstance(r[k], t) and not isinstance(r[k], bool) for k, t in fields.items()), (task, r)
            if task == "piqa":
                assert r["label"] in (0, 1)
            if task == "hellaswag":
                assert len(r["endings"]) == 4 and r["label"] in "0123" and r["ctx"] == f"{r['ctx_a']} {r['ctx_b']}"
            if task == "winogrande":
                assert r["sentence"].count("_") == 1 and r["answer"] in ("1", "2")
        if task != "lambada_openai":  # labels are not all the same answer
            key = {"piqa": "label", "hellaswag": "label", "winogrande": "answer"}[task]
            assert len({r[key] for r in rows}) > 1


def test_generator_reproduces_the_shipped_files(tmp_path):
    from ksir.tasks.generate import write

    for p in write(tmp_path):
        rel = p.relative_to(tmp_path)
        assert p.read_bytes() == (SHIPPED_DATA_DIR / rel).read_bytes(), rel


def test_local_tasks_are_the_harness_tasks_with_local_data(tmp_path):
    """The rendered YAMLs resolve (through the harness's own loader) to the harness's task config,
    with only the data source changed; the harness then loads every shipped example."""
    import lm_eval.tasks
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    harness = Path(lm_eval.tasks.__file__).resolve().parent
    out = render_task_yamls("shipped", tmp_path)
    data_keys = {"task", "tag", "dataset_path", "dataset_name", "dataset_kwargs", "training_split",
                 "validation_split", "test_split"}
    for task, rel in HARNESS_YAML.items():
        ours = load_yaml(out / f"ksir_{task}.yaml", resolve_func=False)
        theirs = load_yaml(harness / rel, resolve_func=False)
        assert {k: v for k, v in ours.items() if k not in data_keys} == \
               {k: v for k, v in theirs.items() if k not in data_keys}, task
        assert ours["task"] == f"ksir_{task}" and ours["dataset_path"] == "json"
        split = TASK_SPLITS[task]
        assert theirs[f"{split}_split"] == ours[f"{split}_split"] == split  # the harness's evaluated split
        assert Path(ours["dataset_kwargs"]["data_files"][split]) == SHIPPED_DATA_DIR / task / f"{split}.jsonl"
    loaded = TaskManager(include_path=str(out), include_defaults=False).load([f"ksir_{t}" for t in PAPER_TASKS])
    for task in PAPER_TASKS:
        t = loaded["tasks"][f"ksir_{task}"]
        docs = list(t.eval_docs)
        n = len((SHIPPED_DATA_DIR / task / f"{TASK_SPLITS[task]}.jsonl").read_text().splitlines())
        assert len(docs) == n
        assert t.doc_to_text(docs[0]) is not None and t.doc_to_target(docs[0]) is not None


def test_hub_mode_uses_the_harness_task_names(monkeypatch):
    import lm_eval.tasks

    made = []
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", lambda **kw: made.append(kw) or "tm")
    with task_setup(ZeroShotSpec(**{**GOOD, "data_dir": None})) as (tm, names):
        assert names == list(PAPER_TASKS) and tm == "tm"
    assert made == [{}]  # the default index of harness tasks, hub datasets unchanged
