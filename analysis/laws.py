"""Scaling laws as data: one registry entry per law (adding a law is adding one entry).

A law predicts a metric from run columns (total bits B, parameters N, tokens D, bits k) with
named parameters. Loss laws are fitted in log space (the metric spans orders of magnitude and
errors are relative); accuracy laws in linear space. Parameters that must be positive are
fitted as logs (`a = log A`), which makes the Chinchilla-style log-sum-exp forms smooth.

Every `predict` is written in torch (float64) so that gradients come from autograd: exact,
and one code path for every law, including a user's own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

Tensor = torch.Tensor


@dataclass(frozen=True)
class Law:
    name: str
    formula: str
    params: tuple[str, ...]
    columns: tuple[str, ...]  # run columns the law reads (x)
    predict: Callable[[Tensor, dict[str, Tensor], dict[str, Any]], Tensor]  # -> metric (linear scale)
    grid: dict[str, Sequence[float]]  # starting values per parameter
    space: str = "log"  # residual space: "log" (loss laws) or "linear" (accuracy laws)
    bounds: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    # Display transform of fitted parameters: name -> (label, function of the raw value).
    report: dict[str, tuple[str, Callable[[float], float]]] = field(default_factory=dict)
    per_k: bool = False  # fitted separately for every bit-width k
    setup: Callable[[dict[str, np.ndarray]], dict[str, Any]] | None = None  # data-dependent structure (eff(k))

    def param_names(self, ctx: dict[str, Any]) -> list[str]:
        return list(self.params) + list(ctx.get("extra_params", []))


def _lse(*terms: Tensor) -> Tensor:
    return torch.logsumexp(torch.stack(torch.broadcast_tensors(*terms)), dim=0)


def _power_law_bits(p: Tensor, x: dict[str, Tensor], ctx: dict[str, Any]) -> Tensor:
    e, a, alpha = p[..., 0:1], p[..., 1:2], p[..., 2:3]
    return torch.exp(_lse(e, a - alpha * torch.log(x["total_bits"])))


def _precision(p: Tensor, x: dict[str, Tensor], ctx: dict[str, Any]) -> Tensor:
    e, a, alpha, log_gamma = p[..., 0:1], p[..., 1:2], p[..., 2:3], p[..., 3:4]
    # N_eff = N (1 - exp(-k / gamma)); k = 16 is treated like any other precision (as in Kumar et al.).
    n_eff = x["n_params"] * (1 - torch.exp(-x["bits"] / torch.exp(log_gamma)))
    terms = [e, a - alpha * torch.log(n_eff)]
    if ctx.get("data_term"):
        b, beta = p[..., 4:5], p[..., 5:6]
        terms.append(b - beta * torch.log(x["train_tokens"]))
    return torch.exp(_lse(*terms))


def _eff_setup(cols: dict[str, np.ndarray]) -> dict[str, Any]:
    ks = sorted({float(k) for k in cols["bits"] if float(k) != 16.0})
    return {"eff_ks": ks, "extra_params": [f"log_eff_{k:g}" for k in ks]}


def _efficiency(p: Tensor, x: dict[str, Tensor], ctx: dict[str, Any]) -> Tensor:
    e, a, alpha = p[..., 0:1], p[..., 1:2], p[..., 2:3]
    n_base = 5 if ctx.get("data_term") else 3
    log_eff = torch.zeros_like(x["bits"]) + 0 * p[..., 0:1]  # eff(16) = 1
    for i, k in enumerate(ctx["eff_ks"]):
        log_eff = torch.where(x["bits"] == k, p[..., n_base + i:n_base + i + 1], log_eff)
    terms = [e, a - alpha * (torch.log(x["n_params"]) + log_eff)]
    if ctx.get("data_term"):
        b, beta = p[..., 3:4], p[..., 4:5]
        terms.append(b - beta * torch.log(x["train_tokens"]))
    return torch.exp(_lse(*terms))


def _chinchilla(p: Tensor, x: dict[str, Tensor], ctx: dict[str, Any]) -> Tensor:
    a, b, e, alpha, beta = (p[..., i:i + 1] for i in range(5))
    return torch.exp(_lse(a - alpha * torch.log(x["n_params"]), b - beta * torch.log(x["train_tokens"]), e))


def _sigmoid_bits(p: Tensor, x: dict[str, Tensor], ctx: dict[str, Any]) -> Tensor:
    lo, hi, s, m = (p[..., i:i + 1] for i in range(4))
    return lo + (hi - lo) * torch.sigmoid(torch.exp(s) * (torch.log(x["total_bits"]) - m))


def _sigmoid_loss(p: Tensor, x: dict[str, Tensor], ctx: dict[str, Any]) -> Tensor:
    lo, hi, s, m = (p[..., i:i + 1] for i in range(4))
    return lo + (hi - lo) * torch.sigmoid(-torch.exp(s) * (x["val_loss"] - m))


GRID_LSE = {"e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0), "alpha": np.arange(0.0, 2.01, 0.5)}

LAWS: dict[str, Law] = {
    law.name: law
    for law in [
        Law("power_bits", "L_k(B) = E + A * B^(-alpha_k), one fit per bit-width k", ("e", "a", "alpha"),
            ("total_bits",), _power_law_bits, GRID_LSE, per_k=True,
            report={"e": ("E", np.exp), "a": ("A", np.exp)}),
        Law("precision", "L(N, k) = E + A * (N * (1 - exp(-k / gamma)))^(-alpha)  [Kumar et al. 2025]",
            ("e", "a", "alpha", "log_gamma"), ("n_params", "bits"), _precision,
            {**GRID_LSE, "log_gamma": np.log([0.5, 1.0, 2.0, 4.0])},
            report={"e": ("E", np.exp), "a": ("A", np.exp), "log_gamma": ("gamma", np.exp)}),
        Law("precision_data", "L(N, D, k) = E + A * N_eff(k)^(-alpha) + B * D^(-beta)",
            ("e", "a", "alpha", "log_gamma", "b", "beta"), ("n_params", "bits", "train_tokens"), _precision,
            {**GRID_LSE, "log_gamma": np.log([1.0, 3.0]), "b": np.arange(0.0, 25.1, 5.0), "beta": np.arange(0.0, 2.01, 0.5)},
            report={"e": ("E", np.exp), "a": ("A", np.exp), "b": ("B", np.exp), "log_gamma": ("gamma", np.exp)}),
        Law("efficiency", "L(N, k) = E + A * (N * eff(k))^(-alpha), eff(16) = 1  [QuEST; Frantar et al. 2025]",
            ("e", "a", "alpha"), ("n_params", "bits"), _efficiency, GRID_LSE, setup=_eff_setup,
            report={"e": ("E", np.exp), "a": ("A", np.exp)}),
        Law("efficiency_data", "L(N, D, k) = E + A * (N * eff(k))^(-alpha) + B * D^(-beta)",
            ("e", "a", "alpha", "b", "beta"), ("n_params", "bits", "train_tokens"), _efficiency,
            {**GRID_LSE, "b": np.arange(0.0, 25.1, 5.0), "beta": np.arange(0.0, 2.01, 0.5)}, setup=_eff_setup,
            report={"e": ("E", np.exp), "a": ("A", np.exp), "b": ("B", np.exp)}),
        Law("chinchilla", "L(N, D) = E + A / N^alpha + B / D^beta  [Hoffmann et al. 2022, Approach 3]",
            ("a", "b", "e", "alpha", "beta"), ("n_params", "train_tokens"), _chinchilla,
            {"a": np.arange(0.0, 25.1, 5.0), "b": np.arange(0.0, 25.1, 5.0), "e": np.arange(-1.0, 1.01, 0.5),
             "alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5)},
            report={"e": ("E", np.exp), "a": ("A", np.exp), "b": ("B", np.exp)}),
        Law("sigmoid_bits", "acc(B) = lo + (hi - lo) * sigmoid(s * (log B - m))", ("lo", "hi", "log_s", "m"),
            ("total_bits",), _sigmoid_bits,
            {"lo": [0.0, 0.25], "hi": [0.5, 0.8, 1.0], "log_s": [-1.0, 0.0, 1.0], "m": [10.0, 15.0, 20.0, 25.0]},
            space="linear", report={"log_s": ("s", np.exp)}),
        Law("sigmoid_loss", "acc(L) = lo + (hi - lo) * sigmoid(-s * (L - m))", ("lo", "hi", "log_s", "m"),
            ("val_loss",), _sigmoid_loss,
            {"lo": [0.0, 0.25], "hi": [0.5, 0.8, 1.0], "log_s": [-1.0, 0.0, 1.0], "m": [1.0, 2.0, 3.0, 4.0]},
            space="linear", report={"log_s": ("s", np.exp)}),
    ]
}


def custom_law(name: str, fn: Callable[..., Tensor], params: Sequence[str], columns: Sequence[str],
               grid: dict[str, Sequence[float]], space: str = "log") -> Law:
    """A user's own law: `fn(p: dict[str, Tensor], x: dict[str, Tensor]) -> Tensor` (metric, linear scale)."""

    def predict(p: Tensor, x: dict[str, Tensor], ctx: dict[str, Any]) -> Tensor:
        return fn({n: p[..., i:i + 1] for i, n in enumerate(params)}, x)

    return Law(name, f"user law {name}", tuple(params), tuple(columns), predict, grid, space=space)


def get_law(law: str | Law) -> Law:
    if isinstance(law, Law):
        return law
    if law not in LAWS:
        from ksir.errors import ConfigError

        raise ConfigError("law", law, sorted(LAWS))
    return LAWS[law]
