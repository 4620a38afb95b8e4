"""ksir's zero-shot path (in-memory model -> harness) gives the numbers of the harness called
directly, and ksir's reported perplexity is the harness's rolling log-likelihood perplexity."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ksir.evaluate import evaluate_lm
from ksir.spec import ZeroShotSpec
from ksir.zeroshot import (
    PAPER_TASKS,
    SHIPPED_DATA_DIR,
    TASK_SPLITS,
    evaluate_zeroshot,
    rolling_loglikelihoods,
    run_harness,
    zeroshot_metrics,
)

LIMIT = 12  # examples per task: 4 tasks x 12 docs = 132 log-likelihood requests
CFG = ZeroShotSpec(enabled=True, tasks=list(PAPER_TASKS), limit=LIMIT, batch_size=8, data_dir="shipped")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)


def _direct_task_dir(tmp: Path) -> Path:
    """Task YAMLs written here, not by ksir: the harness's YAML + the shipped files, as a user would."""
    import lm_eval.tasks

    harness = Path(lm_eval.tasks.__file__).resolve().parent
    paths = {"lambada_openai": "lambada/lambada_openai.yaml", "piqa": "piqa/piqa.yaml",
             "hellaswag": "hellaswag/hellaswag.yaml", "winogrande": "winogrande/default.yaml"}
    for task, rel in paths.items():
        split = TASK_SPLITS[task]
        cfg = {"include": str(harness / rel), "task": f"direct_{task}", "tag": [], "dataset_path": "json",
               "dataset_name": None, "training_split": None,
               "dataset_kwargs": {"data_files": {split: str(SHIPPED_DATA_DIR / task / f"{split}.jsonl")}}}
        (tmp / f"direct_{task}.yaml").write_text(yaml.safe_dump(cfg))
    return tmp


@torch.no_grad()
def _manual_loglik(model, tok, ctx: str, cont: str) -> tuple[float, bool]:
    """log p(cont | ctx) with plain torch (the harness's convention: trailing context spaces move
    to the continuation; tokens of the whole string are split at the context's length)."""
    n = len(ctx) - len(ctx.rstrip())
    if n:
        ctx, cont = ctx[:-n], ctx[-n:] + cont
    whole = tok.encode(ctx + cont, add_special_tokens=False)
    c = len(tok.encode(ctx, add_special_tokens=False))
    ids = torch.tensor([whole])
    logp = model(input_ids=ids).logits[0, c - 1:-1].float().log_softmax(-1)
    target = ids[0, c:]
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def _lls(samples: list[dict]) -> dict[int, np.ndarray]:
    return {s["doc_id"]: np.array([r[0] for r in s["filtered_resps"]]) for s in samples}


@pytest.fixture(scope="module")
def ksir_results(trained_tiny):
    return run_harness(trained_tiny.model, trained_tiny.tokenizer, CFG, "cpu", log_samples=True)


def test_ksir_path_matches_harness_called_directly(trained_tiny, ksir_results, tmp_path):
    """Same per-example log-likelihoods and accuracies as lm_eval.simple_evaluate on the saved
    checkpoint (loaded by the harness itself, batch size 1, user-written task YAMLs)."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    ckpt = str(trained_tiny.checkpoint)
    lm = HFLM(pretrained=ckpt, tokenizer=ckpt, device="cpu", batch_size=1, dtype="float32")
    direct = lm_eval.simple_evaluate(
        model=lm, tasks=[f"direct_{t}" for t in PAPER_TASKS], num_fewshot=0, limit=LIMIT, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(_direct_task_dir(tmp_path)), include_defaults=False),
        log_samples=True)
    ours = zeroshot_metrics(ksir_results)
    worst = 0.0
    for t in PAPER_TASKS:
        mine, theirs = ksir_results["samples"][f"ksir_{t}"], direct["samples"][f"direct_{t}"]
        assert len(mine) == len(theirs) == LIMIT
        assert [s["doc"] for s in mine] == [s["doc"] for s in theirs]
        assert [s["arguments"] for s in mine] == [s["arguments"] for s in theirs]
        a, b = _lls(mine), _lls(theirs)
        for d in a:
            np.testing.assert_allclose(a[d], b[d], rtol=0, atol=1e-4)
            worst = max(worst, float(np.abs(a[d] - b[d]).max()))
        assert [s["acc"] for s in mine] == [s["acc"] for s in theirs]
        for m in ("acc", "acc_norm", "perplexity"):
            if f"{m},none" in direct["results"][f"direct_{t}"]:
                assert ours[f"zs_{t}_{m}"] == pytest.approx(direct["results"][f"direct_{t}"][f"{m},none"], rel=1e-6)
        assert ours[f"zs_n_{t}"] == LIMIT
    assert ours["zs_acc_mean"] == pytest.approx(np.mean([ours[f"zs_{t}_acc"] for t in PAPER_TASKS]))
    print(f"max |ll_ksir - ll_direct| = {worst:.3g}")


def test_harness_loglikelihoods_match_plain_torch(trained_tiny, ksir_results):
    """An independent check of what the harness scores: every (context, continuation) log-likelihood
    recomputed with a plain forward pass, and the accuracy recomputed from those numbers."""
    model, tok = trained_tiny.model, trained_tiny.tokenizer
    for t in PAPER_TASKS:
        samples = ksir_results["samples"][f"ksir_{t}"]
        accs = []
        for s in samples:
            manual = [_manual_loglik(model, tok, ctx, cont) for ctx, cont in s["arguments"]]
            lls = np.array([m[0] for m in manual])
            np.testing.assert_allclose(lls, [r[0] for r in s["filtered_resps"]], rtol=0, atol=1e-4)
            if t == "lambada_openai":  # acc = the target word is the greedy continuation
                accs.append(float(manual[0][1]))
            else:  # winogrande's gold index is its doc_to_text (the harness's partial scoring)
                gold = {"1": 0, "2": 1}[s["doc"]["answer"]] if t == "winogrande" else int(s["target"])
                accs.append(float(np.argmax(lls) == gold))
            assert accs[-1] == s["acc"]
        assert zeroshot_metrics(ksir_results)[f"zs_{t}_acc"] == pytest.approx(np.mean(accs))


def test_quantized_model_is_evaluated_in_memory(trained_tiny):
    """Weights changed in memory (3-bit row-absmax round-to-nearest, never saved) are what is scored."""
    base = evaluate_zeroshot(trained_tiny.model, trained_tiny.tokenizer, replace(CFG, tasks=["piqa"]), "cpu")
    q = copy.deepcopy(trained_tiny.model)
    with torch.no_grad():
        for mod in q.model.layers.modules():
            if isinstance(mod, torch.nn.Linear):
                s = mod.weight.abs().amax(1, keepdim=True) / 3
                mod.weight.copy_((mod.weight / s).round().clamp(-3, 3) * s)
    res = run_harness(q, trained_tiny.tokenizer, replace(CFG, tasks=["piqa"]), None, log_samples=True)
    s = res["samples"]["ksir_piqa"][0]
    ctx, cont = s["arguments"][0]
    assert s["filtered_resps"][0][0] == pytest.approx(_manual_loglik(q, trained_tiny.tokenizer, ctx, cont)[0], abs=1e-4)
    assert s["filtered_resps"][0][0] != pytest.approx(_manual_loglik(trained_tiny.model, trained_tiny.tokenizer, ctx, cont)[0], abs=1e-3)
    assert set(base) >= {"zs_piqa_acc", "zs_piqa_acc_norm", "zs_acc_mean", "zs_n_piqa"}
    assert base["zs_acc_mean"] == base["zs_piqa_acc"]


def test_evaluation_leaves_model_and_rng_state_alone(trained_tiny):
    model = trained_tiny.model
    model.train()
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    try:
        evaluate_zeroshot(model, trained_tiny.tokenizer, replace(CFG, tasks=["winogrande"], limit=2), "cpu")
        assert model.training  # a QAT job continues in train mode
        assert torch.equal(torch.rand(3), expected)  # the harness's reseeding is undone
    finally:
        model.eval()


def _round_trip_blocks(tok, blocks: torch.Tensor) -> torch.Tensor:
    keep = [b for b in blocks if tok.encode(tok.decode(b[1:].tolist()), add_special_tokens=False) == b[1:].tolist()]
    return torch.stack(keep)


def test_reported_perplexity_equals_harness_rolling_perplexity(trained_tiny):
    """ksir's val_ppl over its evaluation blocks equals the harness's loglikelihood_rolling perplexity
    on the same text. "Same text" made exact: ksir predicts tokens 1..S-1 of each block from the
    block's own prefix, so each block becomes one harness document (its tokens 1..S-1 as text,
    scored in one window) whose rolling prefix token is the block's first token."""
    model, tok = trained_tiny.model, trained_tiny.tokenizer
    blocks = _round_trip_blocks(tok, trained_tiny.eval_blocks)
    assert len(blocks) >= 0.75 * len(trained_tiny.eval_blocks)  # only blocks cut inside a UTF-8 character drop
    ours = evaluate_lm(model, blocks, batch_size=8, device="cpu")

    total_ll, total_tokens = 0.0, 0
    for first in sorted(set(blocks[:, 0].tolist())):
        group = blocks[blocks[:, 0] == first]
        texts = [tok.decode(b[1:].tolist()) for b in group]
        for ll, n in rolling_loglikelihoods(model, tok, texts, prefix_token_id=first, batch_size=8):
            total_ll += ll
            total_tokens += n
    assert total_tokens == ours["eval_tokens"] == len(blocks) * (blocks.shape[1] - 1)
    harness_ppl = math.exp(-total_ll / total_tokens)
    rel = abs(harness_ppl - ours["val_ppl"]) / ours["val_ppl"]
    print(f"val_ppl {ours['val_ppl']:.6f} harness rolling ppl {harness_ppl:.6f} rel diff {rel:.2e}")
    assert rel < 1e-3
    # The harness's default (first token predicted from end-of-text) scores one more token per
    # document, so it is a different number: the test above is not trivially satisfied.
    default = rolling_loglikelihoods(model, tok, [tok.decode(b.tolist()) for b in blocks[:4]], batch_size=8)
    assert sum(n for _, n in default) == 4 * blocks.shape[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_evaluation_matches_cpu(trained_tiny, ksir_results):
    """On a GPU the model is moved there for the evaluation (and back), with the same scores."""
    cfg = replace(CFG, tasks=["piqa", "lambada_openai"])
    gpu = run_harness(trained_tiny.model, trained_tiny.tokenizer, cfg, "cuda", log_samples=True)
    assert next(trained_tiny.model.parameters()).device.type == "cpu"
    for t in cfg.tasks:
        a, b = _lls(gpu["samples"][f"ksir_{t}"]), _lls(ksir_results["samples"][f"ksir_{t}"])
        for d in a:
            np.testing.assert_allclose(a[d], b[d], rtol=0, atol=1e-2)
