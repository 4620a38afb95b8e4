import pytest

from ksir.config import compose_config as compose
from ksir.config import run_key, validate
from ksir.errors import ConfigError


def test_default_config_composes_and_validates():
    cfg = compose([])
    validate(cfg)
    assert cfg.job == "train" and cfg.model.family == "llama" and cfg.quant.bits == 16


def test_run_key_ignores_paths_logging_and_launcher_but_not_results():
    base = compose(["job=quantize", "quant.bits=4"])
    same = compose(["job=quantize", "quant.bits=4", "out_dir=/elsewhere", "logger=none", "launcher=joblib",
                    "eval.batch_size=3", "force=true"])
    assert run_key(base) == run_key(same)
    for change in (["quant.bits=3"], ["quant.blocksize=128"], ["model.size=s"], ["data.seq_len=64"],
                   ["seed=1"], ["eval.sequences=8"], ["trainer.tokens_per_param=2"]):
        assert run_key(compose(["job=quantize", "quant.bits=4", *change])) != run_key(base), change
    # A train job's identity ignores quantization settings: every k shares one base model.
    assert run_key(compose(["quant.bits=4"]), "train") == run_key(compose(["quant.bits=8"]), "train")
    assert run_key(base).startswith("q-") and run_key(base, "train").startswith("t-")


@pytest.mark.parametrize("overrides,key", [
    (["job=evaluate"], "job"),
    (["model.family=gpt5"], "model.family"),
    (["model.size=xxl"], "model.size"),
    (["job=quantize", "quant.bits=0"], "quant.bits"),
    (["job=quantize", "quant.bits=4", "quant.blocksize=96"], "quant.blocksize"),
    (["job=quantize", "quant.dtype=posit", "quant.bits=4"], "quant.dtype"),
    (["job=quantize", "model.checkpoint=/nonexistent/model"], "model.checkpoint"),
    (["job=quantize", "model.train_if_missing=false", "out_dir=/nonexistent"], "model.checkpoint"),
    (["trainer.lr=0"], "trainer.lr"),
    (["trainer=gpu"], "trainer.lightning.accelerator"),
    (["eval.sequences=0"], "eval.sequences"),
    (["data=files"], "data.files"),  # data.files.train left at ??? (missing)
    (["data=files", "data.files.train=/no/such.txt"], "data.files.train"),
])
def test_invalid_values_name_the_key(overrides, key):
    cfg = compose(overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert e.value.key.startswith(key), str(e.value)
    assert "\n" not in str(e.value)


def test_zeroshot_block_changes_the_key_only_when_enabled():
    base = run_key(compose(["job=quantize", "quant.bits=4"]))
    assert run_key(compose(["job=quantize", "quant.bits=4", "eval.zeroshot.limit=5"])) == base  # disabled
    zs = run_key(compose(["job=quantize", "quant.bits=4", "eval=zeroshot"]))
    assert zs != base
    assert run_key(compose(["job=quantize", "quant.bits=4", "eval=zeroshot", "eval.zeroshot.batch_size=4"])) == zs
    with pytest.raises(ConfigError, match="eval.zeroshot.tasks"):
        validate(compose(["eval=zeroshot", "eval.zeroshot.tasks=[piqa,no_such_task]"]))
