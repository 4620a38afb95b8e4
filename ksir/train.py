"""Training one model with PyTorch Lightning: AdamW, linear warm-up + cosine decay, a token budget
that scales with the parameter count (tokens = tokens_per_param * N)."""

from __future__ import annotations

import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, RandomSampler, TensorDataset
from transformers import get_cosine_schedule_with_warmup

from ksir import quiet
from ksir.spec import TrainerSpec

# Lightning's pytree helper calls a torch API that torch deprecates, once per step: a warning about Lightning's
# code, not the user's, that filled every training log (the pinned Lightning has no release without it).
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


class CausalLM(pl.LightningModule):
    """Wraps a Hugging Face causal LM; the HF model stays the thing that is saved and quantized.

    QAT additions: learned quantization constants (LSQ scales, k-SIR alpha / beta) get no weight decay and
    their own learning-rate multiplier; an optional frozen teacher adds a distillation term
    (1 - w) * CE + w * T^2 * KL(teacher || student) on the logits."""

    def __init__(self, model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                 warmup_steps: int, max_steps: int, eval_blocks: torch.Tensor | None = None,
                 teacher: torch.nn.Module | None = None, distill_weight: float = 0.0, distill_temperature: float = 1.0,
                 scale_lr: float = 1.0, compile_model: bool = False, parametrization: str = "sp"):
        super().__init__()
        self.parametrization = parametrization
        self.model = model
        self.lr, self.weight_decay, self.betas = lr, weight_decay, tuple(betas)
        self.warmup_steps, self.max_steps = warmup_steps, max_steps
        self.eval_blocks = eval_blocks
        # Kept out of the module tree (a list): the teacher is not trained, checkpointed or counted.
        self._teacher = [teacher.eval().requires_grad_(False)] if teacher is not None and distill_weight > 0 else []
        self.distill_weight, self.distill_temperature, self.scale_lr = distill_weight, distill_temperature, scale_lr
        self._forward = [torch.compile(model) if compile_model else model]

    def on_fit_start(self) -> None:
        for t in self._teacher:
            t.to(self.device)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (ids,) = batch
        out = self._forward[0](input_ids=ids, labels=ids)
        loss = out.loss
        if self._teacher:
            with torch.no_grad():
                t_logits = self._teacher[0](input_ids=ids).logits
            T = self.distill_temperature
            kl = F.kl_div(F.log_softmax(out.logits.float() / T, -1).flatten(0, 1),
                          F.log_softmax(t_logits.float() / T, -1).flatten(0, 1), log_target=True,
                          reduction="batchmean") * T * T
            self.log("train/ce", loss)
            self.log("train/kl", kl)
            loss = (1 - self.distill_weight) * loss + self.distill_weight * kl
        # A finiteness check syncs the device: every step on CPU (free), every 10th on accelerators.
        if (self.device.type == "cpu" or self.global_step % 10 == 0) and not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss.item()} at step {self.global_step}")
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/tokens", float((self.global_step + 1) * ids.numel()))
        return loss

    def configure_optimizers(self) -> Any:
        return build_optimizer(self.model, self.lr, self.weight_decay, self.betas, self.warmup_steps, self.max_steps,
                               self.scale_lr, self.parametrization)


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    warmup_steps: int, max_steps: int, scale_lr: float = 1.0, parametrization: str = "sp") -> dict[str, Any]:
    """AdamW (with the parametrization's per-parameter learning rates) + linear warm-up / cosine decay; shared
    by the Lightning module and the plain-loop benchmark."""
    from ksir.parametrization import PARAMETRIZATIONS

    opt = PARAMETRIZATIONS[parametrization].optimizer(model, lr, weight_decay, betas, scale_lr)
    sched = get_cosine_schedule_with_warmup(opt, warmup_steps, max_steps)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ProgressPrinter(pl.Callback):
    """Training time that survives a resume (kept in the Lightning checkpoint), and one plain line every ~25%
    of training for logs (step, loss, tokens/s); on a terminal Lightning's own progress bar shows instead."""

    def __init__(self, max_steps: int, tokens_per_step: int, every: int | None = None, lines: bool = True):
        self.max_steps, self.tokens_per_step, self.lines = max_steps, tokens_per_step, lines
        self.every = every or max(1, max_steps // 4)
        self.t0 = time.time()
        self.before = 0.0  # seconds trained before this process (restored on resume)
        self.start_step = 0

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.t0, self.start_step = time.time(), trainer.global_step  # > 0 after a resume
        if self.start_step:
            print(f"  resumed at step {self.start_step}", flush=True)

    @property
    def elapsed(self) -> float:
        return self.before + time.time() - self.t0

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.before = float(state.get("elapsed_s", 0.0))

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any, idx: int) -> None:
        step = trainer.global_step
        if self.lines and (step % self.every == 0 or step == self.max_steps):
            dt = time.time() - self.t0
            loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
            print(f"  train step {step}/{self.max_steps}  loss {loss:.4f}  "
                  f"{(step - self.start_step) * self.tokens_per_step / max(dt, 1e-9):,.0f} tok/s", flush=True)


class ResumableSampler(RandomSampler):
    """torch's RandomSampler with a seeded generator (the same index order, so uninterrupted runs are unchanged),
    that can start part-way: `start` indices are drawn and skipped. The position is saved in every checkpoint
    (`DataPosition`), so a resumed job sees exactly the batches an uninterrupted one would, none twice."""

    def __init__(self, data: Any, num_samples: int, seed: int):
        super().__init__(data, num_samples=num_samples)
        self.seed, self.start = seed, 0

    def __iter__(self) -> Any:
        self.generator = torch.Generator().manual_seed(self.seed)  # each pass the same order, from its start
        for i, idx in enumerate(super().__iter__()):
            if i >= self.start:
                yield idx


class DataPosition(pl.Callback):
    """Counts the batches training has consumed (a prefetched batch is not consumed) and keeps torch's CPU
    random state in the checkpoint. Lightning runs checkpoint callbacks last, so a checkpoint written at step s
    records the s batches behind it."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs: Any, batch: Any,
                           idx: int) -> None:
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rng") is not None:
            torch.set_rng_state(state["rng"])


class ResumableLoader(DataLoader):
    """The training loader with its position in the data order as Lightning-checkpointed state: restored into
    the sampler before the first batch of a resumed run."""

    def __init__(self, data: Any, sampler: ResumableSampler, batch_size: int, position: DataPosition):
        super().__init__(data, batch_size=batch_size, sampler=sampler, num_workers=0, drop_last=True)
        self.position = position

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.position.batches * int(self.batch_size)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.sampler.start = int(state["samples"])
        self.position.batches = self.sampler.start // int(self.batch_size)


def plan_steps(n_params: int, trainer: TrainerSpec, seq_len: int) -> tuple[int, int]:
    """(steps, tokens): the token budget tokens_per_param * N rounded up to whole batches."""
    tokens_per_step = trainer.batch_size * seq_len
    steps = max(trainer.min_steps, math.ceil(trainer.tokens_per_param * n_params / tokens_per_step))
    if trainer.max_steps:
        steps = min(steps, trainer.max_steps)
    return steps, steps * tokens_per_step


def last_checkpoint(resume_dir: Path | None, expected: dict[str, torch.Size] | None = None) -> Path | None:
    """The newest usable Lightning checkpoint of an interrupted run: last.ckpt, else the periodic one. A file
    that is truncated, or complete but not loadable as this model's checkpoint (another shape, a garbled
    pickle, no training state), is set aside (renamed *.corrupt) with one warning line naming it and why; none
    left = fresh start."""
    if resume_dir is None or not resume_dir.is_dir():
        return None
    candidates = sorted(resume_dir.glob("*.ckpt"), key=lambda p: (p.name != "last.ckpt", -p.stat().st_mtime))
    for p in candidates:
        problem = checkpoint_problem(p, expected)
        if problem is None:
            return p
        print(f"  warning: corrupt resume checkpoint set aside ({problem})", flush=True)
        p.rename(p.with_suffix(".corrupt"))
    return None


def checkpoint_problem(path: Path, expected: dict[str, torch.Size] | None = None) -> str | None:
    """Why a Lightning checkpoint cannot resume this model (None: it can). Loaded memory-mapped: the weights
    are not read, only the pickle and the tensor shapes."""
    from ksir.integrity import verify_torch_file

    problem = verify_torch_file(path)
    if problem is not None:
        return problem
    try:
        state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle is the file's problem
        return f"{path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})"
    if not isinstance(state, dict) or "state_dict" not in state or "global_step" not in state:
        return f"{path}: not a Lightning training checkpoint (no state_dict / global_step)"
    if expected is not None:
        got = {k: tuple(v.shape) for k, v in state["state_dict"].items() if hasattr(v, "shape")}
        want = {k: tuple(v) for k, v in expected.items()}
        if got != want:
            diff = sorted(set(got) ^ set(want)) or sorted(k for k in want if got.get(k) != want[k])
            return f"{path}: its weights do not fit this model ({len(diff)} differ, e.g. {diff[0]})"
    return None


@dataclass(frozen=True)
class Distillation:
    """A frozen teacher whose softened logits the student also learns: loss (1 - weight) * CE + weight * T^2 KL."""

    teacher: torch.nn.Module
    weight: float
    temperature: float = 1.0


def train_model(model: torch.nn.Module, train_blocks: torch.Tensor, trainer: TrainerSpec, n_params: int, *,
                seed: int, loggers: list[Any] | None = None, resume_dir: Path | None = None,
                distill: Distillation | None = None, scale_lr: float = 1.0, parametrization: str = "sp",
                callbacks: list[pl.Callback] | None = None) -> dict[str, Any]:
    """Train in place for the token budget of `n_params` parameters; returns what the result record needs
    about training.

    With `resume_dir`, a Lightning checkpoint is written there every `trainer.checkpoint_every_n_steps`
    steps, and an interrupted job relaunched with the same identity resumes from it exactly: weights, optimizer,
    scheduler, step, the position in the data order and the random state are restored, so it ends with the
    weights of an uninterrupted run.
    QAT: `model` is already prepared (ksir.qat.prepare_qat) and `trainer.lr` is the QAT learning rate; `distill`
    adds a teacher, `scale_lr` multiplies the learning rate of the quantization constants.
    `parametrization` (ksir.parametrization) picks the optimizer's per-parameter learning rates; the model is
    built under it already, and its matmuls already run at trainer.matmul_precision (ksir.precision.apply).
    `trainer.compile` runs the training forward through torch.compile; `callbacks` are extra Lightning
    callbacks (benchmarks time the steady state with one)."""
    seq_len = train_blocks.shape[1]
    steps, tokens = plan_steps(n_params, trainer, seq_len)
    pl.seed_everything(seed, workers=True, verbose=False)
    module = CausalLM(model, lr=trainer.lr, weight_decay=trainer.weight_decay, betas=tuple(trainer.betas),
                      warmup_steps=max(1, int(trainer.warmup_fraction * steps)), max_steps=steps,
                      teacher=distill.teacher if distill else None, distill_weight=distill.weight if distill else 0.0,
                      distill_temperature=distill.temperature if distill else 1.0, scale_lr=scale_lr,
                      compile_model=trainer.compile, parametrization=parametrization)
    position = DataPosition()
    batch = trainer.batch_size
    loader = ResumableLoader(TensorDataset(train_blocks), ResumableSampler(train_blocks, steps * batch, seed), batch,
                             position)
    on_terminal = sys.stderr.isatty()
    clock = ProgressPrinter(steps, batch * seq_len, lines=not on_terminal)
    cbs: list[pl.Callback] = [clock, position]
    every = trainer.checkpoint_every_n_steps or 0
    checkpointing = resume_dir is not None and every > 0
    if checkpointing:
        cbs.append(ModelCheckpoint(dirpath=resume_dir, filename="step{step}", every_n_train_steps=every,
                                   save_top_k=1, save_last=True))
    quiet.apply()  # Lightning's loggers speak at INFO from their import on: GPU/TPU lines, tips, why fit stopped
    fit = pl.Trainer(max_steps=steps, logger=loggers or False, enable_checkpointing=checkpointing,
                     enable_model_summary=False, enable_progress_bar=on_terminal, callbacks=cbs + list(callbacks or []),
                     **dict(trainer.lightning))
    ckpt = last_checkpoint(resume_dir, {k: v.shape for k, v in module.state_dict().items()})
    if ckpt is not None:
        print(f"  resuming from {ckpt}", flush=True)
    try:
        fit.fit(module, loader, ckpt_path=str(ckpt) if ckpt else None)
    except SystemExit:
        if fit.interrupted:  # Lightning turns Ctrl-C into exit(1); a sweep needs the interrupt to end well
            raise KeyboardInterrupt from None
        raise
    wall = clock.elapsed  # the whole run, the part before an interruption included
    return {"train_tokens": tokens, "train_steps": steps, "train_time_s": wall,
            "train_tokens_per_s": tokens / max(wall, 1e-9),
            "resumed_from_step": clock.start_step if ckpt is not None else None,
            "final_train_loss": float(fit.callback_metrics.get("train/loss", float("nan")))}
