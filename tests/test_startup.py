"""ksir.startup: what a job process skips at start-up, and that the packed backends still work without it.

Each check runs in a fresh interpreter (the test process has long imported transformers)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ksir import startup

SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    import torch
    from ksir import startup
    from ksir.spec import LoggerSpec

    seen = {"patched": startup.keep_kernel_libraries_lazy()}
    startup.preload_wandb(LoggerSpec(mode="disabled"))
    seen["wandb_when_disabled"] = startup.WANDB_LAUNCH_MODELS in sys.modules
    startup.preload_wandb(LoggerSpec(mode="offline"))
    seen["wandb_when_offline"] = startup.WANDB_LAUNCH_MODELS in sys.modules

    from transformers import AutoModelForCausalLM, LlamaConfig
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=260, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    blocks = torch.randint(0, 260, (4, 32), generator=torch.Generator().manual_seed(1))
    model(blocks)  # a transformers model built and run: what every job does
    seen["after_model"] = {m: m in sys.modules for m in startup.KEPT_LAZY}

    from ksir.deploy.job import quantize_packed
    from ksir.evaluate import evaluate_lm
    from ksir.quant.backends import format_for
    from ksir.quant.config import QuantConfig
    seen["packed_minus_simulated"] = {}
    for backend, over in (("torchao", dict(bits=8, dtype="int", granularity="channel")),
                          ("hqq", dict(bits=4, dtype="int_asym"))):
        q = QuantConfig(backend=backend, **over, measure={"repeats": 1, "decode_tokens": 1, "prompt_len": 8, "decode_batches": [1]})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, _, d = quantize_packed(model, q, format_for(q), lambda m, full: evaluate_lm(m, blocks, 4), blocks,
                                      torch.device("cpu"))
        seen["packed_minus_simulated"][backend] = d["packed_minus_simulated"]
    seen["after_packing"] = {m: m in sys.modules for m in startup.KEPT_LAZY}
    print(json.dumps(seen))
""")


def _run(env: dict[str, str]) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "WANDB_SILENT": "true", **env})
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in startup.KEPT_LAZY),
                    reason="needs ksir[deploy] (hqq and torchao installed)")
def test_jobs_load_no_kernel_library_they_do_not_use_and_packing_still_works():
    on = _run({})
    assert on["patched"] is True
    # a transformers model built and run without importing hqq or torchao (transformers' own default imports both)
    assert on["after_model"] == {"hqq": False, "torchao": False}
    # ksir's packed backends import what they use, and give the same numbers as the simulated grid
    assert on["after_packing"] == {"hqq": True, "torchao": True}
    assert all(abs(v) < 2e-3 for v in on["packed_minus_simulated"].values()), on
    # W&B's launch-input models are imported early only for a job that logs
    assert on["wandb_when_disabled"] is False and on["wandb_when_offline"] is True

    off = _run({startup.PLAIN_ENV: "1"})  # the opt-out: transformers as it comes
    assert off["patched"] is False and off["after_model"] == {"hqq": True, "torchao": True}
    assert off["wandb_when_offline"] is False
    assert off["packed_minus_simulated"] == pytest.approx(on["packed_minus_simulated"], abs=1e-6)


def test_too_late_is_a_no_op_not_a_half_patch():
    """Once a transformers model module is loaded the libraries are imported already: nothing is changed."""
    import transformers.modeling_utils  # noqa: F401
    from transformers.utils import import_utils

    before = {n: getattr(import_utils, n) for n in startup.KERNEL_CHECKS if hasattr(import_utils, n)}
    assert startup.keep_kernel_libraries_lazy() is False
    assert {n: getattr(import_utils, n) for n in before} == before
