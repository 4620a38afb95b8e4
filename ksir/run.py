"""The bodies of the two kinds of job (registered in `ksir.jobs`): train one model, or load + quantize one.

Each takes a `JobSpec` and returns the job-specific fields of its result record (`ksir.records`);
`ksir.jobs.execute` adds identity, status and timestamps and writes the record atomically, last.
`wall_time_s` is the job's compute: W&B start-up and finish (which can stall on a network) are outside it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ksir import checkpoints, environment, identity, records, tracking
from ksir.data import build_tokenizer, load_documents, load_token_data
from ksir.data.corpus import documents_digest
from ksir.data.tokenizer import load_pretrained_tokenizer
from ksir.evaluate import evaluate_lm
from ksir.families import count_params, own_config
from ksir.spec import JobSpec

hf_logging.disable_progress_bar()  # ksir prints its own progress lines


def eval_device(spec: JobSpec) -> torch.device:
    if spec.eval.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(spec.eval.device)


def evaluate_all(spec: JobSpec, model: torch.nn.Module, tok: Any, data: Any, device: torch.device,
                 zeroshot: bool = True) -> dict[str, float]:
    """Held-out LM metrics, plus zero-shot task accuracy (lm-evaluation-harness) when enabled."""
    metrics = evaluate_lm(model, data.eval_blocks(spec.eval.sequences), spec.eval.batch_size, device)
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite metrics: {bad}")
    zs = spec.eval.zeroshot
    if zs.enabled and zeroshot:
        from ksir.zeroshot import evaluate_zeroshot

        print(f"  zero-shot: {', '.join(zs.tasks)} (limit {zs.limit})", flush=True)
        metrics.update(evaluate_zeroshot(model, tok, zs.as_dict(), device))
    return metrics


def job_environment(spec: JobSpec, docs: Any, data: Any) -> dict[str, Any]:
    """The record's `environment`: this process's, plus digests of the documents and token blocks the job
    read (the embedded corpus is the running Python's standard library: it differs between Pythons)."""
    return environment.collect(data={"source": spec.data.source, "documents": documents_digest(docs),
                                     "tokens": data.digest})


def run_train(spec: JobSpec) -> dict[str, Any]:
    """Train one own-family size, save it (HF format + tokenizer), evaluate it.

    With `qat.enabled`: quantization-aware training at qat.bits (from scratch, or fine-tuning the own-family
    full-precision checkpoint given by qat.init_from, optionally distilling from it); the export also holds the
    learned quantization constants (ksir.qat.save_qat_checkpoint) and the record is accounted like PTQ."""
    from ksir.qat import prepare_qat, save_qat_checkpoint
    from ksir.train import train_model

    qat = spec.qat
    cache = spec.paths.cache_dir
    docs = load_documents(spec.data.as_dict(), cache)
    tok = build_tokenizer(dataclasses.asdict(spec.data.tokenizer), docs["train"]["text"])
    data = load_token_data(docs, tok, spec.data.seq_len, cache)
    data.eval_blocks(spec.eval.sequences)  # too few validation blocks fails here, before any training
    torch.manual_seed(spec.seed)
    init_ckpt, teacher = None, None
    if qat.enabled and qat.init_from:
        init_ckpt = _qat_init_checkpoint(spec)
        model = checkpoints.load_model(init_ckpt, torch.device("cpu")).train()
        if qat.distill.weight > 0:
            teacher = checkpoints.load_model(init_ckpt, torch.device("cpu"))
    else:
        model = _new_model(spec, tok)
    lowp = spec.trainer.matmul_precision != "fp32"
    if lowp:
        from ksir import precision

        precision.apply(model, spec.trainer.matmul_precision, spec.trainer.matmul_scaling)
    n_total, n_nonemb = count_params(model)
    n_budget = n_total if spec.trainer.param_count == "total" else n_nonemb
    summary = prepare_qat(model, qat, data.train[: spec.trainer.batch_size]) if qat.enabled else None
    key = identity.run_key(spec)
    run = tracking.start_run(spec.logger, key, "train", f"{spec.model.family}/train", spec.raw, spec.paths.wandb)
    try:
        t0 = time.time()
        loggers = tracking.lightning_loggers(run)
        device = eval_device(spec)
        tag = f" QAT {qat.regime} {qat.bits:g}-bit {qat.dtype}" if qat.enabled else ""
        tag += f" {spec.model.parametrization}" if spec.model.parametrization != "sp" else ""
        tag += f" matmuls {spec.trainer.matmul_precision}" if lowp else ""
        print(f"[train] {spec.model.family}-{spec.model.size}{tag}: N={n_total:,} ({n_nonemb:,} non-embedding)", flush=True)
        resume_dir = identity.partial_dir(spec)
        info = train_model(model, data.train, spec.trainer, n_budget, loggers, spec.seed, resume_dir,
                           teacher=teacher, distill_weight=qat.distill.weight if qat.enabled else 0.0,
                           distill_temperature=qat.distill.temperature, scale_lr=qat.scale_lr,
                           lr=qat.lr if qat.enabled else None, parametrization=spec.model.parametrization)
        resumed_from = info.pop("resumed_from_step", None)
        if lowp:
            precision.remove(model)  # the trained weights are evaluated and saved at full precision
        model = _export(spec, model, data.train.shape[1]).to(device)
        metrics = evaluate_all(spec, model, tok, data, device)  # QAT models get zero-shot accuracy too
        path = identity.checkpoint_dir(spec)
        meta = {"run_key": key, "model_key": identity.model_key(spec), "family": spec.model.family,
                "size": spec.model.size, "train_tokens": info["train_tokens"], "data_fingerprint": data.fingerprint}
        common = {"checkpoint": str(path), "n_params": n_total, "n_nonemb": n_nonemb,
                  "train_tokens": info["train_tokens"], "metrics": {**metrics, **info},
                  "resumed_from_step": resumed_from}
        if summary is None:
            checkpoints.save_checkpoint(model.cpu(), tok, path, meta)
            fields = records.train_fields(**common, spec=spec)
        else:
            meta.update(qat=qat.as_dict(), init_from=init_ckpt)
            save_qat_checkpoint(model.cpu(), tok, path, meta, qat, summary)
            fields = records.qat_fields(spec, summary, init_ckpt, **common)
        shutil.rmtree(resume_dir, ignore_errors=True)  # finished: the resume state is no longer needed
        fields["wall_time_s"] = time.time() - t0
        fields["environment"] = job_environment(spec, docs, data)
        tracking.finish_run(run, records.to_wandb_summary(fields))
        run = None
        return fields
    finally:
        tracking.finish_run(run, {}, exit_code=1)


def _qat_init_checkpoint(spec: JobSpec) -> str:
    """qat.init_from: a checkpoint folder, or `auto` = this family/size's full-precision model trained with the
    same data, trainer and seed (a declared dependency: run before this job, see ksir.jobs)."""
    if spec.qat.init_from != "auto":
        p = Path(str(spec.qat.init_from)).expanduser()
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"qat.init_from={spec.qat.init_from!r}: no Hugging Face model folder there")
        return str(p.absolute())
    return checkpoints.base_checkpoint(spec)


def _new_model(spec: JobSpec, tok: Any) -> torch.nn.Module:
    """A freshly initialised own-family model under model.parametrization."""
    from ksir.parametrization import PARAMETRIZATIONS

    hf_cfg = own_config(spec.family, spec.model.size, vocab_size=len(tok), bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return PARAMETRIZATIONS[spec.model.parametrization].build(hf_cfg)


def _export(spec: JobSpec, model: torch.nn.Module, seq_len: int) -> torch.nn.Module:
    """The trained model as a plain Hugging Face model computing the same function (sp: itself)."""
    from ksir.parametrization import PARAMETRIZATIONS

    if spec.qat.enabled:
        return model
    return PARAMETRIZATIONS[spec.model.parametrization].export(model, seq_len)


def run_quantize(spec: JobSpec) -> dict[str, Any]:
    from ksir.quant import needs_calibration, quantize_model
    from ksir.quant.backends import format_for

    ckpt = checkpoints.resolve_checkpoint(spec)
    qcfg = spec.quant
    device = eval_device(spec)
    model = checkpoints.load_base_model(ckpt, device, cache=spec.model.cache_base)
    tok = load_pretrained_tokenizer(ckpt)
    cache = spec.paths.cache_dir
    docs = load_documents(spec.data.as_dict(), cache)
    data = load_token_data(docs, tok, spec.data.seq_len, cache)
    data.eval_blocks(spec.eval.sequences)  # checked before quantizing
    n_total, n_nonemb = count_params(model)
    key = identity.run_key(spec)
    run = tracking.start_run(spec.logger, key, "quantize", f"{spec.model.family}/quantize", spec.raw, spec.paths.wandb)
    try:
        t0 = time.time()
        fmt, deploy = format_for(qcfg), None
        if fmt is not None:  # a real packed model, measured next to the 16-bit one
            from ksir.deploy.job import quantize_packed

            print(f"  packing with {qcfg.backend} ({fmt.name}); measuring next to the 16-bit model", flush=True)
            summary, metrics, deploy = quantize_packed(
                model, qcfg, fmt, lambda m, full: evaluate_all(spec, m, tok, data, device, zeroshot=full),
                data.eval_blocks(spec.eval.sequences), device)
        else:
            calib = data.calibration_blocks(qcfg.calib_sequences, spec.seed).to(device) if needs_calibration(qcfg) else None
            teacher = copy.deepcopy(model).eval() if qcfg.heal.steps else None  # the 16-bit model, before quantizing
            summary = quantize_model(model, qcfg, calib)
            quant_time = time.time() - t0
            healed = {}
            if teacher is not None:  # PTQ + KD: the 16-bit parts learn from the 16-bit model; k-bit weights frozen
                from ksir.quant.heal import heal_model

                print(f"  healing: {qcfg.heal.steps} steps of distillation into the 16-bit parameters", flush=True)
                healed = heal_model(model, teacher, qcfg, data.train, spec.trainer, spec.seed)
                del teacher
                model.eval()
            metrics = {**evaluate_all(spec, model, tok, data, device), "quant_time_s": quant_time, **healed}
        meta = checkpoints.read_meta(ckpt)
        fields = records.quantize_fields(spec, summary, checkpoint=ckpt, n_params=n_total, n_nonemb=n_nonemb,
                                         train_tokens=meta.get("train_tokens") or spec.family.train_tokens,
                                         metrics=metrics, deploy=deploy)
        fields["wall_time_s"] = time.time() - t0
        fields["environment"] = job_environment(spec, docs, data)
        tracking.finish_run(run, records.to_wandb_summary(fields))
        run = None
        return fields
    finally:
        tracking.finish_run(run, {}, exit_code=1)
