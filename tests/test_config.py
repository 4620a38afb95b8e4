from pathlib import Path

import pytest

from ksir.config import CONF_DIR, run_key, validate
from ksir.config import compose_config as compose
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
    (["job=quantize", "quant.bits=4", "quant.dtype=int_asym", "quant.zero_point=bf16"], "quant.zero_point"),
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


def test_zero_point_changes_the_key_only_for_int_asym():
    def key(*o):
        return run_key(compose(["job=quantize", "quant.bits=4", *o]))

    assert key("quant.zero_point=int") == key()  # int: no zero-point, so results (and keys) are unchanged
    assert key("quant.dtype=int_asym", "quant.zero_point=int") != key("quant.dtype=int_asym")
    qat = ["qat=lsq", "qat.dtype=int_asym"]
    assert run_key(compose([*qat, "qat.zero_point=int"])) != run_key(compose(qat))


def test_zeroshot_block_changes_the_key_only_when_enabled():
    base = run_key(compose(["job=quantize", "quant.bits=4"]))
    assert run_key(compose(["job=quantize", "quant.bits=4", "eval.zeroshot.limit=5"])) == base  # disabled
    zs = run_key(compose(["job=quantize", "quant.bits=4", "eval=zeroshot"]))
    assert zs != base
    assert run_key(compose(["job=quantize", "quant.bits=4", "eval=zeroshot", "eval.zeroshot.batch_size=4"])) == zs
    with pytest.raises(ConfigError, match="eval.zeroshot.tasks"):
        validate(compose(["eval=zeroshot", "eval.zeroshot.tasks=[piqa,no_such_task]"]))


@pytest.mark.parametrize("name", sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_and_its_own_family_sweeps_validate(name):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params, f"{name} declares its sweep"
    if cfg.model.family == "llama":  # runnable here: check every job of the sweep, as the sweeper does
        import itertools

        keys = list(params)
        for values in itertools.product(*(str(params[k]).split(",") for k in keys)):
            validate(compose([f"experiment={name}", *(f"{k}={v}" for k, v in zip(keys, values, strict=True))]))
