"""Config -> JobSpec: composition by real Hydra, validation as construction, one-line errors naming the key."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ksir.config import CONF_DIR, compose_config, compose_spec
from ksir.errors import ConfigError
from ksir.spec import JobSpec


def test_default_config_composes_into_a_typed_spec():
    spec = compose_spec([])
    assert spec.job == "train" and spec.model.family == "llama" and spec.quant.bits == 16.0
    assert isinstance(spec.eval.sequences, int) and isinstance(spec.trainer.lr, float)
    assert spec.raw["model"]["size"] == "xs" and "hydra" not in spec.raw


def test_numbers_are_typed_once(tmp_path):
    spec = compose_spec(["job=quantize", "quant.bits=4", "quant.blocksize=64.0", "trainer.tokens_per_param=1",
                         f"out_dir={tmp_path}"])
    assert spec.quant.blocksize == 64 and isinstance(spec.quant.blocksize, int)
    assert spec.quant.bits == 4.0 and isinstance(spec.quant.bits, float)
    assert spec.trainer.tokens_per_param == 1.0 and isinstance(spec.trainer.tokens_per_param, float)


@pytest.mark.parametrize("overrides,key", [
    (["job=evaluate"], "job"),
    (["model.family=gpt5"], "model.family"),
    (["model.size=xxl"], "model.size"),
    (["job=quantize", "quant.bits=0"], "quant.bits"),
    (["job=quantize", "quant.bits=4", "quant.blocksize=96"], "quant.blocksize"),
    (["job=quantize", "quant.dtype=posit", "quant.bits=4"], "quant.dtype"),
    (["job=quantize", "model.checkpoint=/nonexistent/model"], "model.checkpoint"),
    (["job=quantize", "quant.bits=4", "quant.dtype=int_asym", "quant.zero_point=bf16"], "quant.zero_point"),
    (["trainer.lr=0"], "trainer.lr"),
    (["trainer=gpu"], "trainer.lightning.accelerator"),
    (["eval.sequences=0"], "eval.sequences"),
    (["eval.sequences=abc"], "eval.sequences"),
    (["eval.sequences=100000", "data.max_documents=50"], "eval.sequences"),  # more than the corpus can give
    (["eval.batch_size=2.5"], "eval.batch_size"),
    (["trainer.max_steps=-5"], "trainer.max_steps"),
    (["trainer.max_steps=0"], "trainer.max_steps"),
    (["seed=abc"], "seed"),
    (["quant.bits=four", "job=quantize"], "quant.bits"),
    (["data=files"], "data.files"),  # data.files.train left at ??? (missing)
    (["data=files", "data.files.train=/no/such.txt"], "data.files.train"),
    (["out_dir=/etc/passwd/out"], "out_dir"),  # a file where the folder must go
])
def test_invalid_values_name_the_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        compose_spec(overrides)
    assert e.value.key.startswith(key), str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("content,why", [(b"", "empty"), (b"\x00\x01\x02binary" * 50, "binary")])
def test_empty_or_binary_data_file_is_one_line_before_compute(tmp_path, content, why):
    f = tmp_path / "corpus.txt"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=why) as e:
        compose_spec(["data=files", f"data.files.train={f}", f"out_dir={tmp_path}"])
    assert e.value.key == "data.files.train"


def test_results_folder_that_cannot_be_created_fails_before_compute(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the results folder must go")  # fails for root too, unlike chmod
    with pytest.raises(ConfigError, match="cannot create") as e:  # nothing is created before compute
        compose_spec([f"paths.results={blocker}/results", f"out_dir={tmp_path}"])
    assert e.value.key == "paths.results"


def test_spec_from_a_stored_config_needs_no_files():
    """Records written long ago are re-described from their config without the files they used."""
    cfg = compose_config(["job=quantize", "model.checkpoint=/gone/model", "quant.bits=4"])
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True)
    spec = JobSpec.from_config(raw)  # the values: pure
    assert spec.model.checkpoint == "/gone/model"
    from ksir import preflight

    with pytest.raises(ConfigError, match="model.checkpoint"):
        preflight.check(spec)  # the environment: the folder is gone


def test_the_config_layer_imports_no_ml_stack():
    """Parsing, validating and keying a sweep's jobs must not pay torch's (or transformers'...) import."""
    code = ("import sys; import hydra_plugins.ksir_sweeper, ksir.cli, ksir.jobs; from ksir.config import compose_spec; "
            "from ksir.identity import run_key; run_key(compose_spec(['job=quantize', 'quant.bits=4', 'eval=zeroshot'])); "
            "import json; print(json.dumps(sorted(m for m in ('torch','transformers','datasets','lm_eval',"
            "'pytorch_lightning','wandb','numpy','pandas','scipy') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_and_its_own_family_sweeps_validate(name, tmp_path):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{name} declares its sweep"
    if cfg.model.family == "llama":  # runnable here: the sweeper's pre-flight validates and keys every job
        from .helpers import run_here

        r = run_here("ksir-run", "-m", f"experiment={name}", "dry_run=true", f"out_dir={tmp_path}", cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        n = 1
        for v in params.values():
            n *= len(str(v).split(","))
        # Jobs that are one job (the 16-bit baseline of a base model, whatever scheme it is swept under) collapse:
        # every job is validated, the distinct ones are planned, and the count says so.
        import re

        m = re.search(r"\[sweep\] (\d+) of (\d+) jobs are the same job as another", r.stdout)
        collapsed = int(m[1]) if m else 0
        assert (int(m[2]) if m else n) == n
        if m:
            assert "quant.bits=16" in r.stdout.split("(collapsed):")[1].split(";")[0]
        assert f"[sweep] {n - collapsed} jobs validated" in r.stdout and "none run" in r.stdout
