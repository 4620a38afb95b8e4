"""Hub families load from a local path (the only thing that works offline), through the real job."""

from __future__ import annotations

import pytest
import torch
import transformers

from ksir.config import compose_config
from ksir.errors import ConfigError
from ksir.evaluate import evaluate_lm
from ksir.jobs import execute
from ksir.spec import JobSpec

from .helpers import TINY

TINY_ARCHS = {
    "pythia": transformers.GPTNeoXConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4),
    "opt": transformers.OPTConfig(hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                                  word_embed_proj_dim=64),
    "gpt2": transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4),  # Conv1D layers, not nn.Linear
    "bloom": transformers.BloomConfig(hidden_size=64, n_layer=2, n_head=4),
    "qwen2.5": transformers.Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2),
}


@pytest.fixture(scope="module")
def local_models(tmp_path_factory, trained_tiny):
    """Tiny random models of each public family's architecture, saved like a hub download."""
    out = {}
    for family, cfg in TINY_ARCHS.items():
        cfg.vocab_size = len(trained_tiny.tokenizer)
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(family)
        transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
        trained_tiny.tokenizer.save_pretrained(path)
        out[family] = path
    return out


@pytest.mark.parametrize("family", sorted(TINY_ARCHS))
def test_quantize_a_local_copy_of_each_public_family(local_models, tiny_cfg, family):
    path = local_models[family]
    base = execute(tiny_cfg("job=quantize", f"model={family}", f"model.checkpoint={path}", "quant.bits=16",
                            "logger=none"))
    q4 = execute(tiny_cfg("job=quantize", f"model={family}", f"model.checkpoint={path}", "quant.bits=4",
                          "logger=none"))
    assert base["family"] == q4["family"] == family and q4["checkpoint"] == str(path)
    assert q4["n_quantized_params"] > 0 and q4["total_bits"] < base["total_bits"] == 16 * base["n_params"]
    # The 16-bit job's number is the plain evaluation of the model as loaded.
    model = transformers.AutoModelForCausalLM.from_pretrained(path).float()
    assert base["metrics"]["val_loss"] == pytest.approx(
        evaluate_lm(model, _eval_blocks(tiny_cfg, path), batch_size=32)["val_loss"], rel=1e-6)


def _eval_blocks(tiny_cfg, path):
    from ksir.data import load_documents, load_token_data
    from ksir.data.tokenizer import load_pretrained_tokenizer

    cfg = tiny_cfg()
    tok = load_pretrained_tokenizer(path)
    data = load_token_data(load_documents(cfg.data, cfg.paths.cache), tok, int(cfg.data.seq_len), cfg.paths.cache)
    return data.eval_blocks(int(cfg.eval.sequences))


def test_hub_id_not_cached_offline_fails_before_loading(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    cfg = compose_config(["job=quantize", "model=pythia", "model.size=70m", "quant.bits=4", *TINY])
    from ksir import preflight

    with pytest.raises(ConfigError, match="EleutherAI/pythia-70m.*not in the local Hugging Face cache"):
        preflight.check(JobSpec.from_config(cfg))
