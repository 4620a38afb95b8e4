"""Training one model with PyTorch Lightning: AdamW, linear warm-up + cosine decay, a token budget
that scales with the parameter count (tokens = tokens_per_param * N)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from transformers import get_cosine_schedule_with_warmup


class CausalLM(pl.LightningModule):
    """Wraps a Hugging Face causal LM; the HF model stays the thing that is saved and quantized."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                 warmup_steps: int, max_steps: int, eval_blocks: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.max_steps = warmup_steps, max_steps
        self.eval_blocks = eval_blocks

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (ids,) = batch
        loss = self.model(input_ids=ids, labels=ids).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tokens", float((self.global_step + 1) * ids.numel()))
        return loss

    def configure_optimizers(self) -> Any:
        # No weight decay on norms and biases (the usual GPT recipe).
        decay = [p for n, p in self.model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": self.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=self.lr, betas=self.betas)
        sched = get_cosine_schedule_with_warmup(opt, self.warmup_steps, self.max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ProgressPrinter(pl.Callback):
    """One plain line every ~10% of training: readable in logs and CI, unlike a live bar."""

    def __init__(self, max_steps: int, tokens_per_step: int, every: int | None = None):
        self.max_steps, self.tokens_per_step = max_steps, tokens_per_step
        self.every = every or max(1, max_steps // 10)
        self.t0 = time.time()

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, idx: int) -> None:
        step = trainer.global_step
        if step % self.every == 0 or step == self.max_steps:
            dt = time.time() - self.t0
            loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
            print(f"  train step {step}/{self.max_steps}  loss {loss:.4f}  "
                  f"{step * self.tokens_per_step / max(dt, 1e-9):,.0f} tok/s", flush=True)


def plan_steps(n_params: int, cfg: Any, seq_len: int) -> tuple[int, int]:
    """(steps, tokens): the token budget tokens_per_param * N rounded up to whole batches."""
    tokens_per_step = int(cfg.batch_size) * seq_len
    steps = max(int(cfg.min_steps), math.ceil(float(cfg.tokens_per_param) * n_params / tokens_per_step))
    if cfg.get("max_steps"):
        steps = min(steps, int(cfg.max_steps))
    return steps, steps * tokens_per_step


def last_checkpoint(resume_dir: Path | None) -> Path | None:
    p = resume_dir / "last.ckpt" if resume_dir else None
    return p if p is not None and p.exists() else None


def train_model(model: torch.nn.Module, train_blocks: torch.Tensor, cfg: Any, n_params: int,
                loggers: list[Any], seed: int, resume_dir: Path | None = None) -> dict[str, Any]:
    """Train in place; returns what the result record needs about training.

    With `resume_dir`, a Lightning checkpoint is written there every `checkpoint_every_n_steps`
    steps, and an interrupted job relaunched with the same identity resumes from it (optimizer,
    scheduler and step restored; the data order restarts, which only reshuffles the remaining batches)."""
    seq_len = train_blocks.shape[1]
    steps, tokens = plan_steps(n_params, cfg, seq_len)
    pl.seed_everything(seed, workers=True, verbose=False)
    module = CausalLM(model, lr=float(cfg.lr), weight_decay=float(cfg.weight_decay), betas=tuple(cfg.betas),
                      warmup_steps=max(1, int(float(cfg.warmup_fraction) * steps)), max_steps=steps)
    sampler = RandomSampler(train_blocks, num_samples=steps * int(cfg.batch_size),
                            generator=torch.Generator().manual_seed(seed))
    loader = DataLoader(TensorDataset(train_blocks), batch_size=int(cfg.batch_size), sampler=sampler,
                        num_workers=0, drop_last=True)
    callbacks: list[pl.Callback] = [ProgressPrinter(steps, int(cfg.batch_size) * seq_len)]
    every = int(cfg.get("checkpoint_every_n_steps") or 0)
    if resume_dir is not None and every > 0:
        callbacks.append(ModelCheckpoint(dirpath=resume_dir, filename="step{step}", every_n_train_steps=every,
                                         save_top_k=1, save_last=True))
    trainer = pl.Trainer(max_steps=steps, logger=loggers or False, enable_checkpointing=len(callbacks) > 1,
                         enable_model_summary=False, enable_progress_bar=False, callbacks=callbacks,
                         **dict(cfg.lightning))
    ckpt = last_checkpoint(resume_dir)
    if ckpt is not None:
        print(f"  resuming from {ckpt} (step {torch.load(ckpt, map_location='cpu', weights_only=False)['global_step']})",
              flush=True)
    t0 = time.time()
    trainer.fit(module, loader, ckpt_path=str(ckpt) if ckpt else None)
    wall = time.time() - t0
    return {"train_tokens": tokens, "train_steps": steps, "train_time_s": wall,
            "train_tokens_per_s": tokens / max(wall, 1e-9),
            "final_train_loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}
