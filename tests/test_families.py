import pytest
import torch
import transformers

from ksir.errors import ConfigError
from ksir.families import FAMILIES, count_params, get_family, linear_row_sizes, own_config


def _params(size: str) -> tuple[int, int]:
    fam = get_family("llama")
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(own_config(fam, size, vocab_size=257))
    return count_params(model)


def test_own_family_spans_30x_with_five_sizes_from_a_hf_architecture():
    fam = get_family("llama")
    assert fam.kind == "own" and fam.architecture == "LlamaConfig"
    assert len(fam.sizes) >= 5
    counts = [_params(s)[0] for s in fam.size_names]
    assert counts == sorted(counts), "sizes are ordered by parameter count"
    assert counts[-1] / counts[0] >= 30


def test_own_rows_divisible_by_default_block():
    fam = get_family("llama")
    for s in fam.size_names:
        assert all(r % 64 == 0 for r in linear_row_sizes(own_config(fam, s, vocab_size=257)))


def test_count_params_counts_tied_weights_once_and_splits_embeddings():
    cfg = transformers.LlamaConfig(vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg)
    total, nonemb = count_params(model)
    assert total == sum(p.numel() for p in model.parameters())  # parameters() already dedups ties
    assert total - nonemb == 100 * 16


@pytest.mark.parametrize("name,first,last", [("pythia", "EleutherAI/pythia-70m", "EleutherAI/pythia-12b"),
                                             ("opt", "facebook/opt-125m", "facebook/opt-66b"),
                                             ("gpt2", "gpt2", "gpt2-xl"),
                                             ("bloom", "bigscience/bloom-560m", "bigscience/bloom-7b1"),
                                             ("qwen2.5", "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-72B")])
def test_public_families_by_hub_id(name, first, last):
    fam = FAMILIES[name]
    assert fam.kind == "hub"
    assert fam.sizes[0].hub_id == first and fam.sizes[-1].hub_id == last


def test_unknown_family_and_size_name_allowed_values():
    with pytest.raises(ConfigError, match=r"model.family='nope'.*allowed: .*pythia"):
        get_family("nope")
    with pytest.raises(ConfigError, match=r"model.size='huge'.*allowed: xs, s, m"):
        get_family("llama").size("huge")
