"""Training throughput: ksir's Lightning loop vs a plain PyTorch loop of the same Hugging Face model, at full
precision and with 4-bit QAT, in one run.

    python benchmarks/bench_train.py                 # CUDA if present (bf16, torch.compile, ~150M Llama), else a tiny CPU model
    python benchmarks/bench_train.py --preset 450m --steps 40 --json out.json

Both loops do the same work per step: same model, AdamW param groups and schedule (`ksir.train.build_optimizer`),
gradient clipping at 1.0, bf16 autocast on CUDA, batches drawn by the same DataLoader and copied to the device.
Tokens/s are timed over the steady state only (after `--warmup` steps: compilation, allocator warm-up), with the
device synchronised at both ends. Goals (issue): Lightning >= 95% of the plain loop; QAT >= 70% of full precision.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from ksir.qat import QATConfig, prepare_qat
from ksir.spec import TrainerSpec
from ksir.train import build_optimizer, train_model

# Llama shapes: ~150M and ~450M as in the reference measurements, and a tiny one for CPU smoke runs.
PRESETS: dict[str, dict[str, Any]] = {
    "150m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=2048, vocab_size=32000),
    "450m": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=2816, vocab_size=32000),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=384, vocab_size=259),
}
H100_BF16_FLOPS = 989e12


def build_model(preset: str, seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    arch = PRESETS[preset]
    cfg = LlamaConfig(**arch, num_key_value_heads=arch["num_attention_heads"], max_position_embeddings=4096,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


class SteadyTimer(pl.Callback):
    """Wall time from the end of step `warmup` to the end of training, device synchronised."""

    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1 = warmup, None, None

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self._sync()
            self.t0 = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._sync()
        self.t1 = time.perf_counter()


def trainer_cfg(a: argparse.Namespace, cuda: bool) -> TrainerSpec:
    return TrainerSpec(tokens_per_param=1e-9, batch_size=a.batch, lr=1e-3, weight_decay=0.1, betas=[0.9, 0.95],
                       warmup_fraction=0.05, min_steps=a.steps, max_steps=a.steps, checkpoint_every_n_steps=0,
                       compile=a.compile, lightning={"accelerator": "gpu" if cuda else "cpu", "devices": 1,
                                                     "precision": "bf16-mixed" if cuda else "32-true",
                                                     "log_every_n_steps": 50, "gradient_clip_val": 1.0})


def prepare(a: argparse.Namespace, qat_bits: int | None) -> torch.nn.Module:
    model = build_model(a.preset, a.seed)
    if qat_bits is not None:
        prepare_qat(model, QATConfig.from_mapping({"enabled": True, "bits": qat_bits, "scale": "lsq"}))
    return model


def lightning_tps(a: argparse.Namespace, data: torch.Tensor, qat_bits: int | None, cuda: bool) -> float:
    model = prepare(a, qat_bits)
    timer = SteadyTimer(a.warmup)
    train_model(model, data, trainer_cfg(a, cuda), n_params=1, seed=a.seed, callbacks=[timer])
    return (a.steps - a.warmup) * a.batch * a.seq / (timer.t1 - timer.t0)


def plain_tps(a: argparse.Namespace, data: torch.Tensor, qat_bits: int | None, cuda: bool) -> float:
    """The same step without Lightning: forward, backward, clip, AdamW, schedule."""
    device = torch.device("cuda" if cuda else "cpu")
    model = prepare(a, qat_bits).to(device).train()
    fwd = torch.compile(model) if a.compile else model
    opt_cfg = build_optimizer(model, 1e-3, 0.1, (0.9, 0.95), max(1, int(0.05 * a.steps)), a.steps)
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    torch.manual_seed(a.seed)
    sampler = RandomSampler(data, num_samples=a.steps * a.batch, generator=torch.Generator().manual_seed(a.seed))
    loader = DataLoader(TensorDataset(data), batch_size=a.batch, sampler=sampler, num_workers=0, drop_last=True)
    t0 = None
    for step, (ids,) in enumerate(loader, start=1):
        ids = ids.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = fwd(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step == a.warmup:
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
    if cuda:
        torch.cuda.synchronize()
    return (a.steps - a.warmup) * a.batch * a.seq / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="150m" if cuda else "tiny", choices=sorted(PRESETS))
    p.add_argument("--batch", type=int, default=16 if cuda else 32)
    p.add_argument("--seq", type=int, default=1024 if cuda else 128)
    p.add_argument("--steps", type=int, default=60 if cuda else 30)
    p.add_argument("--warmup", type=int, default=15 if cuda else 5)
    p.add_argument("--qat-bits", type=int, default=4)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=cuda,
                   help="torch.compile the model in both loops (default: on with CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    a = p.parse_args(argv)
    if a.warmup >= a.steps:
        p.error("--warmup must be < --steps")
    vocab = PRESETS[a.preset]["vocab_size"]
    data = torch.randint(0, vocab, (max(256, a.batch * 8), a.seq), generator=torch.Generator().manual_seed(a.seed))
    n_params = sum(p.numel() for p in build_model(a.preset, a.seed).parameters())
    device = torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()}, " \
                                                      f"{torch.get_num_threads()} threads)"
    print(f"[bench_train] {device}; Llama {a.preset} ({n_params / 1e6:.1f}M params), batch {a.batch} x {a.seq}, "
          f"{a.steps} steps ({a.warmup} warm-up), {'bf16-mixed' if cuda else 'fp32'}, compile={a.compile}", flush=True)
    res: dict[str, Any] = {"device": device, "preset": a.preset, "n_params": n_params, "batch": a.batch, "seq": a.seq,
                           "steps": a.steps, "warmup": a.warmup, "compile": a.compile, "torch": torch.__version__}
    for mode, bits in (("fp", None), (f"qat{a.qat_bits}", a.qat_bits)):
        res[f"plain_{mode}"] = plain_tps(a, data, bits, cuda)
        res[f"lightning_{mode}"] = lightning_tps(a, data, bits, cuda)
    qat = f"qat{a.qat_bits}"
    res["lightning_vs_plain_fp"] = res["lightning_fp"] / res["plain_fp"]
    res[f"lightning_vs_plain_{qat}"] = res[f"lightning_{qat}"] / res[f"plain_{qat}"]
    res[f"{qat}_vs_fp_lightning"] = res[f"lightning_{qat}"] / res["lightning_fp"]
    res[f"{qat}_vs_fp_plain"] = res[f"plain_{qat}"] / res["plain_fp"]
    print(f"\n{'loop':<12}{'fp tok/s':>14}{qat + ' tok/s':>16}{qat + '/fp':>10}")
    for loop in ("plain", "lightning"):
        print(f"{loop:<12}{res[f'{loop}_fp']:>14,.0f}{res[f'{loop}_{qat}']:>16,.0f}"
              f"{res[f'{loop}_{qat}'] / res[f'{loop}_fp']:>10.1%}")
    print(f"{'lightning/plain':<12}{res['lightning_vs_plain_fp']:>14.1%}{res[f'lightning_vs_plain_{qat}']:>16.1%}")
    if cuda:  # model FLOPs utilisation of the fp loops (6 N per token, attention ignored)
        for loop in ("plain", "lightning"):
            res[f"mfu_{loop}_fp"] = 6 * n_params * res[f"{loop}_fp"] / H100_BF16_FLOPS
        print(f"MFU (fp, vs 989 TFLOP/s): plain {res['mfu_plain_fp']:.1%}, lightning {res['mfu_lightning_fp']:.1%}")
    ok = res["lightning_vs_plain_fp"] >= 0.95 and res[f"{qat}_vs_fp_lightning"] >= 0.70
    res["goals_met"] = ok
    print(f"goals (lightning >= 95% of plain, QAT >= 70% of fp): {'met' if ok else 'NOT met'}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return res


if __name__ == "__main__":
    main()
