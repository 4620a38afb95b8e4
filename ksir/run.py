"""One job, start to end: validate -> (train | load + quantize) -> evaluate -> record + W&B.

The result record is written last and atomically: a job killed at any point leaves either no
record or a complete one.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ksir import checkpoints, config, records, tracking
from ksir.data import build_tokenizer, load_documents, load_token_data
from ksir.data.tokenizer import load_pretrained_tokenizer
from ksir.evaluate import evaluate_lm
from ksir.families import count_params, get_family, own_config

log = logging.getLogger("ksir")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def eval_device(cfg: DictConfig) -> torch.device:
    if cfg.eval.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.eval.device)


def _base_record(cfg: DictConfig, key: str, job: str) -> dict[str, Any]:
    return {"run_key": key, "job": job, "family": cfg.model.family, "size": cfg.model.size,
            "git_commit": git_commit(), "config": OmegaConf.to_container(cfg, resolve=True)}


def evaluate_all(cfg: DictConfig, model: torch.nn.Module, tok: Any, data: Any, device: torch.device) -> dict[str, float]:
    """Held-out LM metrics, plus zero-shot task accuracy (lm-evaluation-harness) when enabled."""
    metrics = evaluate_lm(model, data.eval_blocks(int(cfg.eval.sequences)), int(cfg.eval.batch_size), device)
    _metrics_ok(metrics)
    zs = cfg.eval.get("zeroshot")
    if zs is not None and zs.enabled:
        from ksir.zeroshot import evaluate_zeroshot

        print(f"  zero-shot: {', '.join(zs.tasks)} (limit {zs.limit})", flush=True)
        metrics.update(evaluate_zeroshot(model, tok, OmegaConf.to_container(zs, resolve=True), device))
    return metrics


def _metrics_ok(metrics: dict[str, float]) -> None:
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        raise FloatingPointError(f"non-finite metrics: {bad}")


def run_train(cfg: DictConfig) -> dict[str, Any]:
    """Train one own-family size, save it (HF format + tokenizer), evaluate it.

    With `qat.enabled`: quantization-aware training at qat.bits (from scratch, or fine-tuning the own-family
    full-precision checkpoint given by qat.init_from, optionally distilling from it); the export also holds the
    learned quantization constants (ksir.qat.save_qat_checkpoint) and the record is accounted like PTQ."""
    from pytorch_lightning.loggers import WandbLogger

    from ksir.qat import QATConfig, prepare_qat, save_qat_checkpoint
    from ksir.train import train_model

    key = config.run_key(cfg, "train")
    family = get_family(cfg.model.family)
    qat = QATConfig.from_mapping(cfg.get("qat"))
    cache = Path(cfg.paths.cache).expanduser()
    docs = load_documents(cfg.data, cache)
    tok = build_tokenizer(OmegaConf.to_container(cfg.data.tokenizer), docs["train"]["text"])
    data = load_token_data(docs, tok, int(cfg.data.seq_len), cache)
    torch.manual_seed(int(cfg.seed))
    init_ckpt, teacher = None, None
    if qat.enabled and qat.init_from:
        init_ckpt = _qat_init_checkpoint(cfg, qat)
        model = checkpoints.load_model(init_ckpt, torch.device("cpu")).train()
        if qat.distill.weight > 0:
            teacher = checkpoints.load_model(init_ckpt, torch.device("cpu"))
    else:
        model = _new_model(cfg, family, tok)
    n_total, n_nonemb = count_params(model)
    n_budget = n_total if cfg.trainer.param_count == "total" else n_nonemb
    summary = None
    if qat.enabled:
        calib = data.train[: int(cfg.trainer.batch_size)]  # initial k-SIR alphas (absmax / L per head)
        summary = prepare_qat(model, qat, calib)
    rec = _base_record(cfg, key, "train")
    run = tracking.start_run(cfg.logger, key, "train", f"{cfg.model.family}/train", rec["config"], cfg.paths.wandb)
    try:
        loggers = [WandbLogger(experiment=run)] if run is not None else []
        device = eval_device(cfg)
        tag = f" QAT {qat.regime} {qat.bits:g}-bit {qat.dtype}" if qat.enabled else ""
        print(f"[train] {cfg.model.family}-{cfg.model.size}{tag}: N={n_total:,} ({n_nonemb:,} non-embedding)", flush=True)
        resume_dir = checkpoints.partial_dir(cfg)
        info = train_model(model, data.train, cfg.trainer, n_budget, loggers, int(cfg.seed), resume_dir,
                           teacher=teacher, distill_weight=qat.distill.weight if qat.enabled else 0.0,
                           distill_temperature=qat.distill.temperature, scale_lr=qat.scale_lr,
                           lr=qat.lr if qat.enabled else None)
        model = model.to(device)
        metrics = evaluate_all(cfg, model, tok, data, device)  # QAT models get zero-shot accuracy too
        path = checkpoints.own_checkpoint_dir(cfg)
        meta = {"run_key": key, "family": cfg.model.family, "size": cfg.model.size, "train_tokens": info["train_tokens"],
                "data_fingerprint": data.fingerprint}
        if summary is None:
            checkpoints.save_checkpoint(model.cpu(), tok, path, meta)
            rec.update(method="none", regime="fp", bits=16.0, dtype="none", blocksize=None, total_bits=16.0 * n_total,
                       bits_per_param=16.0, n_quantized_params=0)
        else:
            meta.update(qat=qat.as_dict(), init_from=init_ckpt)
            save_qat_checkpoint(model.cpu(), tok, path, meta, qat, summary)
            block = qat.blocksize if qat.granularity == "block" and qat.weights_quantized else None
            rec.update(method=qat.regime, regime=qat.regime, bits=summary.bits,
                       dtype=qat.dtype if qat.weights_quantized else "none", blocksize=block,
                       granularity=qat.granularity, total_bits=summary.total_bits,
                       bits_per_param=summary.bits_per_param, n_quantized_params=summary.n_quantized,
                       quantizer=qat.resolved_quantizer() if qat.weights_quantized else None, scale=qat.scale,
                       act_bits=qat.act_bits, attention_bits=summary.attention_bits, init_from=init_ckpt,
                       distill_weight=qat.distill.weight, qat=summary.as_dict())
        shutil.rmtree(resume_dir, ignore_errors=True)  # finished: the resume state is no longer needed
        rec.update(checkpoint=str(path), n_params=n_total, n_params_nonembedding=n_nonemb,
                   train_tokens=info["train_tokens"], metrics={**metrics, **info})
        tracking.finish_run(run, tracking.summary_of(rec))
        run = None
        return rec
    finally:
        tracking.finish_run(run, {}, exit_code=1)


def _qat_init_checkpoint(cfg: DictConfig, qat: Any) -> str:
    """qat.init_from: a checkpoint folder, or `auto` = this family/size's full-precision model trained with the
    same data, trainer and seed (trained first if missing, once even with parallel jobs)."""
    if qat.init_from != "auto":
        p = Path(str(qat.init_from)).expanduser()
        if not (p / "config.json").exists():
            raise FileNotFoundError(f"qat.init_from={qat.init_from!r}: no Hugging Face model folder there")
        return str(p.absolute())
    fp_cfg = cfg.copy()
    OmegaConf.update(fp_cfg, "qat", {"enabled": False}, merge=False)
    OmegaConf.update(fp_cfg, "job", "train")
    ensure_own_checkpoint(fp_cfg)
    return str(checkpoints.own_checkpoint_dir(fp_cfg))


def _new_model(cfg: DictConfig, family: Any, tok: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    hf_cfg = own_config(family, cfg.model.size, vocab_size=len(tok), bos_token_id=tok.eos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
    return AutoModelForCausalLM.from_config(hf_cfg)


def ensure_own_checkpoint(cfg: DictConfig) -> None:
    """Train the base model a quantize job needs, once, even with parallel jobs."""
    path = checkpoints.own_checkpoint_dir(cfg)
    with checkpoints.file_lock(path.with_name(path.name + ".lock")):
        if (path / "config.json").exists():
            return
        print(f"[quantize] base checkpoint missing, training it first: {path.name}", flush=True)
        train_cfg = cfg.copy()
        OmegaConf.update(train_cfg, "job", "train")
        execute(train_cfg)


def run_quantize(cfg: DictConfig) -> dict[str, Any]:
    from ksir.quant import QuantConfig, needs_calibration, quantize_model

    key = config.run_key(cfg, "quantize")
    family = get_family(cfg.model.family)
    if family.kind == "own" and not cfg.model.checkpoint:
        ensure_own_checkpoint(cfg)
    ckpt = checkpoints.resolve_checkpoint(cfg)
    qcfg = QuantConfig.from_mapping(OmegaConf.to_container(cfg.quant, resolve=True))
    device = eval_device(cfg)
    model = checkpoints.load_base_model(ckpt, device, cache=bool(cfg.model.get("cache_base", True)))
    tok = load_pretrained_tokenizer(ckpt)
    cache = Path(cfg.paths.cache).expanduser()
    data = load_token_data(load_documents(cfg.data, cache), tok, int(cfg.data.seq_len), cache)
    n_total, n_nonemb = count_params(model)
    rec = _base_record(cfg, key, "quantize")
    run = tracking.start_run(cfg.logger, key, "quantize", f"{cfg.model.family}/quantize", rec["config"], cfg.paths.wandb)
    try:
        calib = data.calibration_blocks(int(qcfg.calib_sequences), int(cfg.seed)).to(device) if needs_calibration(qcfg) else None
        t0 = time.time()
        summary = quantize_model(model, qcfg, calib)
        quant_time = time.time() - t0
        metrics = evaluate_all(cfg, model, tok, data, device)
        meta = checkpoints.read_meta(ckpt)
        rec.update(checkpoint=ckpt, regime="ptq", n_params=n_total, n_params_nonembedding=n_nonemb,
                   n_quantized_params=summary.n_quantized, method=qcfg.method, bits=float(qcfg.bits),
                   dtype=qcfg.dtype, blocksize=qcfg.blocksize if qcfg.granularity == "block" else None,
                   granularity=qcfg.granularity, total_bits=summary.total_bits, bits_per_param=summary.bits_per_param,
                   train_tokens=meta.get("train_tokens") or family.train_tokens,
                   quant=summary.as_dict(), metrics={**metrics, "quant_time_s": quant_time})
        tracking.finish_run(run, tracking.summary_of(rec))
        run = None
        return rec
    finally:
        tracking.finish_run(run, {}, exit_code=1)


JOB_FUNCTIONS = {"train": run_train, "quantize": run_quantize}


def execute(cfg: DictConfig) -> dict[str, Any]:
    """Run one job unless its done record exists (then return it); record failures too."""
    config.validate(cfg)
    key = config.run_key(cfg)
    path = records.record_path(Path(cfg.paths.results), key)
    if path.exists() and not cfg.force:
        try:
            rec = records.read_record(path)
            if rec.get("status") == "done":
                print(f"[{cfg.job}] {key} done already, skipped ({path})", flush=True)
                return {**rec, "skipped": True}
        except ValueError as e:
            log.warning("%s; rerunning", e)
    elif not cfg.force and (remote := tracking.finished_remote_run(cfg.logger, key)) is not None:
        records.write_record(cfg.paths.results, remote)
        print(f"[{cfg.job}] {key} finished on W&B already, skipped (record restored to {path})", flush=True)
        return {**remote, "skipped": True}
    t0 = time.time()
    try:
        rec = JOB_FUNCTIONS[cfg.job](cfg)
        rec.update(status="done", error=None)
    except Exception as e:
        rec = {**_base_record(cfg, key, cfg.job), "status": "failed",
               "error": f"{type(e).__name__}: {e}\n{traceback.format_exc()}"}
        rec.update(wall_time_s=time.time() - t0, created=datetime.now(timezone.utc).isoformat())
        records.write_record(cfg.paths.results, rec)
        raise
    rec.update(wall_time_s=time.time() - t0, created=datetime.now(timezone.utc).isoformat())
    records.write_record(cfg.paths.results, rec)
    m = rec.get("metrics", {})
    print(f"[{cfg.job}] {rec['family']}-{rec['size']} bits={rec.get('bits')} val_loss={m.get('val_loss', float('nan')):.4f} "
          f"total_bits={rec.get('total_bits', 0):.3e} ({time.time() - t0:.1f}s) -> {path}", flush=True)
    return rec
