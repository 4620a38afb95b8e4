"""GPTQ (Frantar et al. 2023) on any grid of this package: every data type, granularity and block size.

Columns are quantized one at a time and the rounding error is spread onto the not yet quantized columns through
the inverse Hessian of the layer's inputs (H = X^T X on calibration data). This follows the reference
implementation (github.com/IST-DASLab/gptq): Cholesky of H^-1, lazy batches of `block_columns` columns, block
scales fitted when the column loop reaches a block (on the already error-updated weights), static scales with
act_order. The loop over columns is inherent to GPTQ (each column depends on all earlier ones); the work inside is
tensor code over all rows. We do not use a GPTQ library (auto-gptq, gptqmodel): they support integer grids only.
Layers are processed transformer block by transformer block, so each block is calibrated on the outputs of the
already quantized blocks before it (the reference's sequential mode).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from ksir.quant.blockwise import Grid, fit_data_code, round_to_grid, search_scale, to_blocks
from ksir.quant.calib import watch_inputs
from ksir.quant.config import GPTQConfig, QuantConfig
from ksir.quant.select import get_weight, set_weight


@torch.no_grad()
def gptq_quantize_weight(
    w: torch.Tensor,
    H: torch.Tensor,
    grid: Grid,
    granularity: str = "block",
    blocksize: int = 64,
    cfg: GPTQConfig | None = None,
    keep_cols: torch.Tensor | None = None,
) -> torch.Tensor:
    """GPTQ of one weight [out, in] given H [in, in] (sum of x x^T over calibration tokens); `keep_cols` stay 16-bit."""
    cfg = cfg or GPTQConfig()
    W = w.detach().float().clone()
    H = H.detach().float().clone()
    n_out, n_in = W.shape
    keep = torch.zeros(n_in, dtype=torch.bool, device=W.device)
    if keep_cols is not None:
        keep[keep_cols] = True
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0

    fit = W.clone()
    fit[:, keep] = 0
    grid = fit_data_code(to_blocks(fit, granularity, blocksize), grid)
    B = blocksize if granularity == "block" else n_in
    lazy = granularity == "block" and not cfg.act_order
    if not lazy:  # static scales from the original weights: [out, n_groups]
        s, z = search_scale(to_blocks(fit, granularity, blocksize), grid)
        S = s.reshape(n_out, -1) if granularity != "tensor" else s.reshape(1, 1).expand(n_out, 1)
        Z = (
            None
            if z is None
            else (z.reshape(n_out, -1) if granularity != "tensor" else z.reshape(1, 1).expand(n_out, 1))
        )

    perm = torch.arange(n_in, device=W.device)
    if cfg.act_order:
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H, keep = W[:, perm], H[perm][:, perm], keep[perm]
    group = perm // B  # group of the original column at each (possibly permuted) position

    H[range(n_in), range(n_in)] += cfg.damp * torch.mean(torch.diag(H))
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    width = (
        B * max(1, cfg.block_columns // B) if lazy else cfg.block_columns
    )  # block starts align with batches
    for i1 in range(0, n_in, width):
        i2 = min(i1 + width, n_in)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if lazy:
                if col % B == 0:
                    blk = W1[:, i : i + B].clone()
                    blk[:, keep[col : col + B]] = 0
                    s, z = search_scale(blk, grid)
            else:
                g = group[col]
                s, z = S[:, g : g + 1], None if Z is None else Z[:, g : g + 1]
            wcol = W1[:, i : i + 1]
            q = round_to_grid(wcol, s, z, grid)
            q = torch.where(keep[col], wcol, q)
            err = (wcol - q) / Hinv1[i, i]
            W1[:, i:] -= err * Hinv1[i : i + 1, i:]
            Q1[:, i : i + 1], Err1[:, i : i + 1] = q, err
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    if cfg.act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q.to(w.dtype)


def block_groups(names: list[str]) -> list[list[str]]:
    """Group layer names by transformer block (the prefix up to the first numeric path component), in order."""
    groups: dict[str, list[str]] = {}
    for n in names:
        m = re.match(r"^(.*?\.\d+)\.", n)
        groups.setdefault(m.group(1) if m else n, []).append(n)
    return list(groups.values())


def collect_hessians(
    model: nn.Module, modules: dict[str, nn.Module], calib: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    """H = 2/n sum x x^T over all calibration tokens for every module (float32, on the module's device)."""
    H: dict[str, torch.Tensor] = {}
    count: dict[str, int] = {}

    def on_input(name: str, x: torch.Tensor) -> None:
        x = x.detach().float()
        H[name] = H.get(name, 0) + x.t() @ x
        count[name] = count.get(name, 0) + x.shape[0]

    watch_inputs(model, modules, calib, batch_size, on_input)
    return {n: 2 * h / count[n] for n, h in H.items()}


def gptq_quantize_model(
    model: nn.Module,
    names: list[str],
    q: QuantConfig,
    grid: Grid | dict[str, Grid],
    calib: torch.Tensor,
    keep: dict[str, torch.Tensor],
) -> None:
    """Quantize `names` in place, one transformer block at a time (Hessians from the partly quantized model).
    grid: one for every layer, or one per layer name (per-layer bits)."""
    modules = dict(model.named_modules())
    for group in block_groups(names):
        watched = {n: modules[n] for n in group}
        hessians = collect_hessians(model, watched, calib, q.gptq.batch_size)
        for n in group:
            m = modules[n]
            wq = gptq_quantize_weight(
                get_weight(m), hessians[n], grid[n] if isinstance(grid, dict) else grid, q.granularity, q.blocksize, q.gptq, keep.get(n)
            )
            set_weight(m, wq)
