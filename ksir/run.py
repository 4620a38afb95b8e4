"""The bodies of the two kinds of job (registered in `ksir.kinds`): train one model, or load + quantize one.

Each takes the `JobSpec` and the job's W&B run (`ksir.tracking.JobRun`, opened and closed by
`ksir.jobs.execute`) and returns the job-specific fields of its result record (`ksir.records`); execute adds
identity, status and timestamps and writes the record atomically, last. `wall_time_s` is the job's compute:
W&B start-up and finish (which can stall on a network) are outside it.
"""

from __future__ import annotations

import copy
import dataclasses
import errno
import math
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging as hf_logging

from ksir import checkpoints, environment, identity, records
from ksir.data import build_tokenizer, load_documents, load_token_data
from ksir.data.corpus import documents_digest
from ksir.data.tokenizer import load_pretrained_tokenizer
from ksir.evaluate import evaluate_lm
from ksir.families import count_params, own_config
from ksir.locks import STORAGE_ERRNOS, StorageError, storage_error
from ksir.spec import JobSpec
from ksir.tracking import JobRun

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
        metrics.update(evaluate_zeroshot(model, tok, zs, device))
    return metrics


def job_environment(spec: JobSpec, docs: Any, data: Any) -> dict[str, Any]:
    """The record's `environment`: this process's, plus digests of the documents and token blocks the job
    read (the embedded corpus is the running Python's standard library: it differs between Pythons)."""
    return environment.collect(data={"source": spec.data.source, "documents": documents_digest(docs),
                                     "tokens": data.digest})


def run_train(spec: JobSpec, run: JobRun) -> dict[str, Any]:
    """Train one own-family size, save it (HF format + tokenizer), evaluate it; under the lock of its model
    key, so that a model is built once whichever jobs need it. A model another job built already (the same
    model key, e.g. a train job with other evaluation settings) is evaluated, not rebuilt, unless `force`.

    With `qat.enabled`: quantization-aware training at qat.bits (from scratch, or fine-tuning the own-family
    full-precision checkpoint given by qat.init_from, optionally distilling from it); the export also holds the
    learned quantization constants (ksir.qat.save_qat_checkpoint) and the record is accounted like PTQ."""
    with checkpoints.model_lock(spec):
        built = identity.find_checkpoint(spec)
        if built is not None and not spec.force:
            try:
                return _evaluate_built(spec, built, run)
            except checkpoints.CheckpointUnusable:
                pass  # set aside: build it again
        return _build(spec, run)


def _evaluate_built(spec: JobSpec, path: Path, run: JobRun) -> dict[str, Any]:
    """The record of a train job whose model exists: evaluated with this job's settings; how it was trained
    comes from the checkpoint (`built_by` names the job that built it)."""
    meta = checkpoints.read_meta(path)
    fields = dict(meta.get("record_fields") or {})
    if not fields and spec.qat.enabled:
        raise RuntimeError(f"{path}: a QAT model built by an older ksir (no record fields in its metadata); "
                           "rerun with force=true to rebuild it")
    cache = spec.paths.cache_dir
    device = eval_device(spec)
    tok = load_pretrained_tokenizer(str(path))
    docs = load_documents(spec.data, cache)
    data = load_token_data(docs, tok, spec.data.seq_len, cache)
    data.eval_blocks(spec.eval.sequences)
    try:
        model = checkpoints.load_model(str(path), device)
    except Exception as e:  # noqa: BLE001 - anything that stops it loading: set aside, rebuilt by the caller
        checkpoints.set_aside(path, f"{path} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        raise checkpoints.CheckpointUnusable(str(path)) from e
    print(f"[train] {spec.model.family}-{spec.model.size}: model {identity.model_key(spec)} exists (built by "
          f"{meta.get('run_key', 'an earlier job')}): evaluating it, not training it again", flush=True)
    t0 = time.time()
    metrics = evaluate_all(spec, model, tok, data, device)
    if not fields:  # a plain model saved before records were kept in its metadata
        n_total, n_nonemb = count_params(model)
        fields = records.train_fields(checkpoint=str(path), n_params=n_total, n_nonemb=n_nonemb,
                                      train_tokens=int(meta.get("train_tokens") or 0), metrics={},
                                      resumed_from_step=None, spec=spec)
    fields.update(checkpoint=str(path), metrics={**metrics, **(meta.get("train_info") or {})},
                  resumed_from_step=None, built_by=meta.get("run_key"), wall_time_s=time.time() - t0,
                  environment=job_environment(spec, docs, data))
    return fields


def _build(spec: JobSpec, run: JobRun) -> dict[str, Any]:
    from ksir.qat import prepare_qat, save_qat_checkpoint
    from ksir.train import Distillation, train_model

    qat = spec.qat
    cache = spec.paths.cache_dir
    docs = load_documents(spec.data, cache)
    tok = build_tokenizer(spec.data.tokenizer, docs["train"]["text"], cache_dir=cache, corpus=docs["train"]._fingerprint)
    data = load_token_data(docs, tok, spec.data.seq_len, cache)
    data.eval_blocks(spec.eval.sequences)  # too few validation blocks fails here, before any training
    torch.manual_seed(spec.seed)
    init_ckpt, distill = None, None
    if qat.enabled and qat.init_from:
        init_ckpt = _qat_init_checkpoint(spec)
        model = checkpoints.load_model(init_ckpt, torch.device("cpu")).train()
        if qat.distill.weight > 0:
            distill = Distillation(checkpoints.load_model(init_ckpt, torch.device("cpu")), qat.distill.weight,
                                   qat.distill.temperature)
    else:
        model = _new_model(spec, tok)
    lowp = spec.trainer.matmul_precision != "fp32"
    if lowp:
        from ksir import precision

        precision.apply(model, spec.trainer.matmul_precision, spec.trainer.matmul_scaling)
    n_total, n_nonemb = count_params(model)
    n_budget = n_total if spec.trainer.param_count == "total" else n_nonemb
    check_space(spec, n_total)  # a full disk is one line now, not a truncated checkpoint later
    summary = prepare_qat(model, qat, data.train[: spec.trainer.batch_size]) if qat.enabled else None
    t0 = time.time()
    device = eval_device(spec)
    tag = f" QAT {qat.regime} {qat.bits:g}-bit {qat.dtype}" if qat.enabled else ""
    tag += f" {spec.model.parametrization}" if spec.model.parametrization != "sp" else ""
    tag += f" matmuls {spec.trainer.matmul_precision}" if lowp else ""
    print(f"[train] {spec.model.family}-{spec.model.size}{tag}: N={n_total:,} ({n_nonemb:,} non-embedding)", flush=True)
    resume_dir = identity.partial_dir(spec)
    # The QAT learning rate, when given, is the trainer's for this job (ksir.records.training_fields records it).
    trainer = dataclasses.replace(spec.trainer, lr=qat.lr) if qat.enabled and qat.lr is not None else spec.trainer
    try:
        info = train_model(model, data.train, trainer, n_budget, seed=spec.seed, loggers=run.loggers(),
                           resume_dir=resume_dir, distill=distill, scale_lr=qat.scale_lr if qat.enabled else 1.0,
                           parametrization=spec.model.parametrization)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:  # a resume checkpoint the device could not take (set aside on relaunch)
            raise storage_error(resume_dir, "a resume checkpoint", e) from None
        raise
    resumed_from = info.pop("resumed_from_step", None)
    if lowp:
        precision.remove(model)  # the trained weights are evaluated and saved at full precision
    model = _export(spec, model, data.train.shape[1]).to(device)
    metrics = evaluate_all(spec, model, tok, data, device)  # QAT models get zero-shot accuracy too
    path = identity.checkpoint_dir(spec)
    meta = {"run_key": run.key, "model_key": identity.model_key(spec), "family": spec.model.family,
            "size": spec.model.size, "train_tokens": info["train_tokens"], "data_fingerprint": data.fingerprint}
    common = {"checkpoint": str(path), "n_params": n_total, "n_nonemb": n_nonemb,
              "train_tokens": info["train_tokens"], "metrics": {**metrics, **info}, "resumed_from_step": resumed_from}
    fields = records.train_fields(**common, spec=spec) if summary is None else \
        records.qat_fields(spec, summary, init_ckpt, **common)
    # What a later job with other evaluation settings needs to record this model without rebuilding it.
    meta.update(record_fields={k: v for k, v in fields.items() if k != "metrics"}, train_info=info)
    try:
        if summary is None:
            checkpoints.save_checkpoint(model.cpu(), tok, path, meta)
        else:
            meta.update(qat=qat.as_dict(), init_from=init_ckpt)
            save_qat_checkpoint(model.cpu(), tok, path, meta, qat, summary)
    except OSError as e:
        if e.errno in STORAGE_ERRNOS:
            raise storage_error(path, f"the trained model ({4 * n_total / 1e6:.0f} MB)", e) from None
        raise
    shutil.rmtree(resume_dir, ignore_errors=True)  # finished: the resume state is no longer needed
    fields["wall_time_s"] = time.time() - t0
    fields["environment"] = job_environment(spec, docs, data)
    return fields


# A Lightning resume checkpoint holds the fp32 weights and AdamW's two moments; the export holds the weights.
RESUME_COPIES, EXPORT_COPIES, MARGIN = 3, 1, 1.2


def check_space(spec: JobSpec, n_params: int) -> None:
    """The checkpoint folder's device can take the resume checkpoint and the exported model, or one line naming
    the folder, what it needs and what it has, before training starts."""
    folder = spec.paths.checkpoints_dir
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    copies = EXPORT_COPIES + (RESUME_COPIES if spec.trainer.checkpoint_every_n_steps else 0)
    need = int(4 * n_params * copies * MARGIN)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise StorageError(errno.ENOSPC, f"{folder}: needs about {need / 1e6:.1f} MB free for the model and its "
                           f"resume checkpoint ({n_params:,} parameters), the device has {free / 1e6:.1f} MB")


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


def _load_base(spec: JobSpec, ckpt: str, device: torch.device) -> torch.nn.Module:
    """The base model, read under its model's shared lock (ksir's own: never while a job replaces it). An own
    model that cannot be loaded is set aside (one line) and CheckpointUnusable raised: the caller rebuilds it,
    as for a truncated one."""
    if not spec.uses_own_checkpoint:
        return checkpoints.load_base_model(ckpt, device, cache=spec.model.cache_base)
    with checkpoints.model_lock(identity.base_train_spec(spec), shared=True):
        try:
            return checkpoints.load_base_model(ckpt, device, cache=spec.model.cache_base)
        except Exception as e:  # noqa: BLE001 - anything that stops it loading
            checkpoints.set_aside(Path(ckpt), f"{ckpt} cannot be loaded ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:200] if str(e) else ''})")
            raise checkpoints.CheckpointUnusable(ckpt) from e


def run_quantize(spec: JobSpec, run: JobRun) -> dict[str, Any]:
    from ksir.quant import needs_calibration, quantize_model
    from ksir.quant.backends import format_for
    from ksir.quant.bits import kv_bits_per_token, kv_shape

    ckpt = checkpoints.resolve_checkpoint(spec)
    qcfg = spec.quant
    device = eval_device(spec)
    if qcfg.unquantized and qcfg.backend != "simulated":  # said, not done silently
        print(f"  16-bit baseline: nothing to pack (quant.backend={qcfg.backend} packs k < 16); the unquantized model is "
              "evaluated, as the baseline of every scheme of this base model", flush=True)
    model = _load_base(spec, ckpt, device)
    tok = load_pretrained_tokenizer(ckpt)
    cache = spec.paths.cache_dir
    docs = load_documents(spec.data, cache)
    data = load_token_data(docs, tok, spec.data.seq_len, cache)
    data.eval_blocks(spec.eval.sequences)  # checked before quantizing
    n_total, n_nonemb = count_params(model)
    t0 = time.time()
    fmt, deploy, kv_cache = format_for(qcfg), None, None
    if fmt is not None:  # a real packed model, measured next to the 16-bit one
        from ksir.deploy.job import quantize_packed

        print(f"  packing with {qcfg.backend} ({fmt.name}); measuring next to the 16-bit model", flush=True)
        summary, metrics, deploy = quantize_packed(
            model, qcfg, fmt, lambda m, full: evaluate_all(spec, m, tok, data, device, zeroshot=full),
            data.eval_blocks(spec.eval.sequences), device)
    else:
        if qcfg.kv.cache != "simulated":  # the real cache can serve this model: checked before any compute
            from ksir.deploy.kvcache import check_model

            check_model(model, qcfg.kv)
        calib = data.calibration_blocks(qcfg.calib_sequences, spec.seed).to(device) if needs_calibration(qcfg) else None
        att = qcfg.attention
        learns = qcfg.heal.steps or (att.on and att.learn)
        teacher = copy.deepcopy(model).eval() if learns else None  # the 16-bit model, before quantizing
        summary = quantize_model(model, qcfg, calib)
        healed = {}
        if att.on:  # k-SIR attention: scales calibrated on the quantized model's own activations
            from ksir.qat.attention import enable_ksir_attention

            enable_ksir_attention(model, att.bits, learn=att.learn, calib=calib)
        quant_time = time.time() - t0
        if teacher is not None and qcfg.heal.steps:  # PTQ + KD: the 16-bit parts learn; k-bit weights frozen
            from ksir.heal import heal_model

            print(f"  healing: {qcfg.heal.steps} steps of distillation into the 16-bit parameters", flush=True)
            healed = heal_model(model, teacher, qcfg, data.train, spec.trainer, spec.seed)
        elif teacher is not None:  # k-SIR attention, learned: alpha and beta only, from the 16-bit model
            from ksir.heal import learn_attention_scales

            print(f"  k-SIR attention: {att.steps} steps of distillation into its scales (weights frozen)", flush=True)
            healed = learn_attention_scales(model, teacher, qcfg, data.train, spec.trainer, spec.seed)
        if teacher is not None:
            del teacher
            model.eval()
        metrics = {**evaluate_all(spec, model, tok, data, device), "quant_time_s": quant_time, **healed}
        if qcfg.kv.cache != "simulated":
            from ksir.deploy.kvcache import measure

            print(f"  KV cache: decoding through transformers' {qcfg.kv.cache} cache, its simulation and the 16-bit "
                  "cache", flush=True)
            kv_cache = measure(model, qcfg.kv, data.eval_blocks(spec.eval.sequences).to(device), qcfg.measure)
    meta = checkpoints.read_meta(ckpt)
    fields = records.quantize_fields(spec, summary, checkpoint=ckpt, n_params=n_total, n_nonemb=n_nonemb,
                                     train_tokens=meta.get("train_tokens") or spec.family.train_tokens,
                                     metrics=metrics, deploy=deploy, kv_cache=kv_cache)
    fields["kv_bits_per_token"] = kv_bits_per_token(kv_shape(model.config), qcfg.kv)  # the inference budget's KV term
    fields["wall_time_s"] = time.time() - t0
    fields["environment"] = job_environment(spec, docs, data)
    return fields
