"""Scaling laws as data: one registry entry per law (adding a law is adding one entry).

A law maps run columns (total bits B, parameters N, tokens D, bits k, ...) and named parameters
to the metric. Loss laws are fitted in log space (losses are positive and errors relative),
accuracy laws in linear space. Positive scale parameters are fitted as logs (`a = log A`), so
the Chinchilla-style forms become a smooth log-sum-exp of terms linear in the parameters.

Each law's `fn(p, x, ctx, jac)` is vectorised numpy with an analytic Jacobian: `p` is [S, P]
(S parameter vectors at once: the whole starting grid in one call), it returns `f` [S, n] (log
prediction for log-space laws, prediction otherwise) and, if `jac`, `J` [S, n, P] = df/dp.
Exact gradients for ~20 us per evaluation are what make a full grid and 1,000 bootstrap
refits cheap. A user's own law (`custom_law`) is written in torch and differentiated by autograd.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Array = np.ndarray
LawFn = Callable[[Array, dict[str, Array], dict[str, Any], bool], tuple[Array, Array | None]]


@dataclass(frozen=True)
class Law:
    """One scaling law: its formula, parameters, the run columns it reads and how to fit it."""

    name: str
    formula: str
    params: tuple[str, ...]
    columns: tuple[str, ...]  # run columns the law reads
    fn: LawFn
    grid: dict[str, Sequence[float]]  # starting values per parameter (their product is the grid)
    space: str = "log"  # residual space: "log" (loss laws) or "linear" (accuracy laws)
    # Display transform of fitted parameters: name -> (label, function of the raw value), e.g. A = exp(a).
    report: dict[str, tuple[str, Callable[[float], float]]] = field(default_factory=dict)
    per_k: bool = False  # fitted separately for every curve (bit-width k, scheme)
    setup: Callable[[dict[str, Array]], dict[str, Any]] | None = None  # data-dependent parameters (eff(k))
    size_column: str = "n_params"  # what "model size" means for degenerate-input checks and held-out fits
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # raw-parameter box (beyond BOUNDS)
    # Distinct model sizes needed before the law's size dependence is identified (its parameters
    # along the size axis, plus one degree of freedom); fewer is reported as unidentified.
    min_sizes: int = 4

    def param_names(self, ctx: dict[str, Any]) -> list[str]:
        return list(self.params) + list(ctx.get("extra_params", []))

    def box(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the raw parameters (the law's own, else BOUNDS by name or prefix)."""
        lo, hi = [], []
        for n in names:
            b = self.bounds.get(n) or BOUNDS.get(n) or next(
                (v for k, v in BOUNDS.items() if k.endswith("*") and n.startswith(k[:-1])), (-np.inf, np.inf))
            lo.append(b[0])
            hi.append(b[1])
        return np.array(lo, float), np.array(hi, float)

    def context(self, cols: dict[str, Array]) -> dict[str, Any]:
        return dict(self.setup(cols)) if self.setup else {}

    def predict(self, p: Array, x: dict[str, Array], ctx: dict[str, Any]) -> Array:
        """Metric (linear scale) at the points x; p [P] -> [n], p [S, P] -> [S, n]."""
        p = np.asarray(p, dtype=float)
        f, _ = self.fn(np.atleast_2d(p), x, ctx, False)
        out = np.exp(f) if self.space == "log" else f
        return out[0] if p.ndim == 1 else out


# ---- building blocks -------------------------------------------------------------------------------------


def _lse(terms: list[Array], jacs: list[Array] | None) -> tuple[Array, Array | None]:
    """log(sum_j exp(t_j)) and its Jacobian sum_j softmax_j * dt_j/dp (terms broadcast to [S, n])."""
    m = terms[0]
    for t in terms[1:]:
        m = np.maximum(m, t)
    w = [np.exp(t - m) for t in terms]
    s = w[0]
    for wj in w[1:]:
        s = s + wj
    f = m + np.log(s)
    if jacs is None:
        return f, None
    J = (w[0] / s)[..., None] * jacs[0]
    for wj, Jj in zip(w[1:], jacs[1:], strict=True):
        J += (wj / s)[..., None] * Jj
    return f, J


def _col(p: Array, i: int) -> Array:
    return p[:, i:i + 1]  # [S, 1]: broadcasts over the n points


def _onehot(shape: tuple[int, int], n_p: int, i: int, value: Array | float = 1.0) -> Array:
    """A Jacobian [S, n, P] that is `value` in column i and zero elsewhere."""
    J = np.zeros((*shape, n_p))
    J[..., i] = value
    return J


# ---- the laws --------------------------------------------------------------------------------------------


def _power(col: str) -> LawFn:
    """L = E + A * x^(-alpha) in one column x (total bits for the per-k laws, parameters for a plain size law)."""

    def fn(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
        e, a, alpha = _col(p, 0), _col(p, 1), _col(p, 2)
        lb = np.log(x[col])[None, :]
        t1 = a - alpha * lb
        if not jac:
            return _lse([e, t1], None)
        sh, P = t1.shape, p.shape[1]
        J1 = _onehot(sh, P, 1)
        J1[..., 2] = -lb
        return _lse([np.broadcast_to(e, sh), t1], [_onehot(sh, P, 0), J1])

    return fn


def _chinchilla(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    a, b, e, alpha, beta = (_col(p, i) for i in range(5))
    ln, ld = np.log(x["n_params"])[None, :], np.log(x["train_tokens"])[None, :]
    t0, t1 = a - alpha * ln, b - beta * ld
    if not jac:
        return _lse([t0, t1, e], None)
    sh, P = np.broadcast_shapes(t0.shape, t1.shape), p.shape[1]
    J0, J1 = _onehot(sh, P, 0), _onehot(sh, P, 1)
    J0[..., 3] = -ln
    J1[..., 4] = -ld
    return _lse([t0, t1, np.broadcast_to(e, sh)], [J0, J1, _onehot(sh, P, 2)])


def _lse_with_data_term(terms: list[Array], jacs: list[Array] | None, p: Array, x: dict[str, Array],
                        ctx: dict[str, Any], ib: int) -> tuple[Array, Array | None]:
    """_lse of the terms plus, when the law has one (ctx["data_term"]), the data term b - beta log D, whose
    parameters are columns ib, ib + 1."""
    if ctx.get("data_term"):
        sh = terms[-1].shape
        ld = np.log(x["train_tokens"])[None, :]
        terms = [*terms, np.broadcast_to(_col(p, ib) - _col(p, ib + 1) * ld, sh)]
        if jacs is not None:
            J = _onehot(sh, p.shape[1], ib)
            J[..., ib + 1] = -ld
            jacs = [*jacs, J]
    return _lse(terms, jacs)


def _precision(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """Kumar et al.: N_eff = N (1 - exp(-k / gamma)); k = 16 is a precision like any other."""
    e, a, alpha, lg = (_col(p, i) for i in range(4))
    u = x["bits"][None, :] / np.exp(lg)  # k / gamma, [S, n]
    log_neff = np.log(x["n_params"])[None, :] + np.log(-np.expm1(-u))
    t1 = a - alpha * log_neff
    sh, P = t1.shape, p.shape[1]
    terms, jacs = [np.broadcast_to(e, sh), t1], None
    if jac:
        J1 = _onehot(sh, P, 1)
        J1[..., 2] = -log_neff
        with np.errstate(over="ignore"):  # u/expm1(u) -> 0 for large u, as it should
            J1[..., 3] = alpha * u / np.expm1(u)  # d/dlog_gamma of -alpha * log(1 - exp(-k/gamma))
        jacs = [_onehot(sh, P, 0), J1]
    return _lse_with_data_term(terms, jacs, p, x, ctx, 4)


def _eff_setup(cols: dict[str, Array]) -> dict[str, Any]:
    ks = sorted({float(k) for k in cols["bits"] if float(k) != 16.0})
    return {"eff_ks": ks, "extra_params": [f"log_eff_{k:g}" for k in ks]}


def _efficiency(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """QuEST / Frantar et al.: one free log eff(k) per bit-width present (eff(16) = 1 is fixed)."""
    e, a, alpha = _col(p, 0), _col(p, 1), _col(p, 2)
    base = 5 if ctx.get("data_term") else 3
    k = x["bits"]
    idx = np.full(k.shape, -1)
    for i, kk in enumerate(ctx["eff_ks"]):
        idx[k == kk] = base + i
    unknown = (idx < 0) & (k != 16.0)
    if unknown.any():
        raise ValueError(f"no eff(k) for bit-widths {sorted(set(k[unknown].tolist()))[:5]}: the efficiency law "
                         "predicts only at the bit-widths it was fitted on")
    log_eff = np.where(idx >= 0, p[:, np.maximum(idx, 0)], 0.0)  # [S, n]
    log_n = np.log(x["n_params"])[None, :] + log_eff
    t1 = a - alpha * log_n
    sh, P = t1.shape, p.shape[1]
    terms, jacs = [np.broadcast_to(e, sh), t1], None
    if jac:
        J1 = _onehot(sh, P, 1)
        J1[..., 2] = -log_n
        rows = np.nonzero(idx >= 0)[0]
        J1[:, rows, idx[rows]] = -alpha
        jacs = [_onehot(sh, P, 0), J1]
    return _lse_with_data_term(terms, jacs, p, x, ctx, 3)


def _sigmoid(col: str, sign: float) -> LawFn:
    """lo + (hi - lo) * sigmoid(sign * s * (x - m)), with x = log(total bits) or the loss."""

    def fn(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
        lo, hi, ls, m = (_col(p, i) for i in range(4))
        v = np.log(x[col]) if col == "total_bits" else x[col]
        z = sign * np.exp(ls) * (v[None, :] - m)
        s = 0.5 * (1 + np.tanh(z / 2))  # overflow-free sigmoid
        f = lo + (hi - lo) * s
        if not jac:
            return f, None
        ds = (hi - lo) * s * (1 - s)
        J = np.stack(np.broadcast_arrays(1 - s, s, ds * z, -ds * sign * np.exp(ls)), axis=-1)
        return f, J

    return fn


def _no_data(cols: dict[str, Array]) -> dict[str, Any]:
    return {"data_term": False}


def _data(cols: dict[str, Array]) -> dict[str, Any]:
    return {"data_term": True}


def _eff_no_data(cols: dict[str, Array]) -> dict[str, Any]:
    return {**_eff_setup(cols), "data_term": False}


def _eff_data(cols: dict[str, Array]) -> dict[str, Any]:
    return {**_eff_setup(cols), "data_term": True}


# Where a parameter can sit: beyond these it has no meaning (negative exponents, gamma far outside the
# swept bits) or cannot be told from its bound by any data (a scale of e^-20). A fitted parameter on
# a bound is reported "at bound" and kept out of claims. The floor of log E depends on the data
# (E below 1% of the smallest loss is zero for every purpose) and is set in analysis.fit.prepare.
BOUNDS: dict[str, tuple[float, float]] = {
    "e": (-20.0, 20.0), "a": (-20.0, 80.0), "b": (-20.0, 80.0), "alpha": (0.0, 5.0), "beta": (0.0, 5.0),
    "log_gamma": (float(np.log(0.05)), float(np.log(64.0))), "log_eff_*": (-12.0, 3.0), "log_s": (-10.0, 10.0),
}

E_A_ALPHA = {"e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0), "alpha": np.arange(0.0, 2.01, 0.5)}
B_BETA = {"b": np.arange(0.0, 25.1, 5.0), "beta": np.arange(0.0, 2.01, 0.5)}
LOG_SCALES = {"e": ("E", np.exp), "a": ("A", np.exp), "b": ("B", np.exp), "log_gamma": ("gamma", np.exp),
              "log_s": ("s", np.exp)}
SIGMOID_GRID = {"lo": [0.0, 0.25], "hi": [0.5, 0.8, 1.0], "log_s": [-1.0, 0.0, 1.0]}

LAWS: dict[str, Law] = {law.name: law for law in [
    Law("power_bits", "L_k(B) = E + A * B^(-alpha_k), one fit per bit-width k (and scheme)",
        ("e", "a", "alpha"), ("total_bits",), _power("total_bits"), E_A_ALPHA, per_k=True, report=LOG_SCALES,
        size_column="total_bits"),
    Law("power_params", "L(N) = E + A * N^(-alpha)  [one precision, tokens not varied; Kaplan et al. 2020 form]",
        ("e", "a", "alpha"), ("n_params",), _power("n_params"), E_A_ALPHA, report=LOG_SCALES),
    Law("precision", "L(N, k) = E + A * (N * (1 - exp(-k / gamma)))^(-alpha)  [Kumar et al. 2025]",
        ("e", "a", "alpha", "log_gamma"), ("n_params", "bits"), _precision,
        {**E_A_ALPHA, "log_gamma": np.log([0.5, 1.0, 2.0, 4.0])}, report=LOG_SCALES,
        setup=_no_data),
    Law("precision_data", "L(N, D, k) = E + A * (N * (1 - exp(-k / gamma)))^(-alpha) + B * D^(-beta)",
        ("e", "a", "alpha", "log_gamma", "b", "beta"), ("n_params", "bits", "train_tokens"), _precision,
        {**E_A_ALPHA, "log_gamma": np.log([1.0, 3.0]), **B_BETA}, report=LOG_SCALES,
        setup=_data),
    Law("efficiency", "L(N, k) = E + A * (N * eff(k))^(-alpha), eff(16) = 1  [QuEST; Frantar et al. 2025]",
        ("e", "a", "alpha"), ("n_params", "bits"), _efficiency, E_A_ALPHA, report=LOG_SCALES,
        setup=_eff_no_data),
    Law("efficiency_data", "L(N, D, k) = E + A * (N * eff(k))^(-alpha) + B * D^(-beta), eff(16) = 1",
        ("e", "a", "alpha", "b", "beta"), ("n_params", "bits", "train_tokens"), _efficiency,
        {**E_A_ALPHA, **B_BETA}, report=LOG_SCALES,
        setup=_eff_data),
    Law("chinchilla", "L(N, D) = E + A / N^alpha + B / D^beta  [Hoffmann et al. 2022, Approach 3]",
        ("a", "b", "e", "alpha", "beta"), ("n_params", "train_tokens"), _chinchilla,
        {"a": np.arange(0.0, 25.1, 5.0), "b": np.arange(0.0, 25.1, 5.0), "e": np.arange(-1.0, 1.01, 0.5),
         "alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5)}, report=LOG_SCALES),
    Law("sigmoid_bits", "acc(B) = lo + (hi - lo) * sigmoid(s * (log B - m))", ("lo", "hi", "log_s", "m"),
        ("total_bits",), _sigmoid("total_bits", 1.0), {**SIGMOID_GRID, "m": [10.0, 15.0, 20.0, 25.0]},
        space="linear", report=LOG_SCALES, size_column="total_bits"),
    Law("sigmoid_loss", "acc(L) = lo + (hi - lo) * sigmoid(-s * (L - m))", ("lo", "hi", "log_s", "m"),
        ("val_loss",), _sigmoid("val_loss", -1.0), {**SIGMOID_GRID, "m": [1.0, 2.0, 3.0, 4.0, 6.0]},
        space="linear", report=LOG_SCALES, size_column="val_loss"),
]}


def custom_law(name: str, fn: Callable[..., Any], params: Sequence[str], columns: Sequence[str],
               grid: dict[str, Sequence[float]], space: str = "log", per_k: bool = False) -> Law:
    """A user's own law: `fn(p: dict[str, Tensor], x: dict[str, Tensor]) -> Tensor`, the metric on a
    linear scale, written in torch (float64); its gradient comes from autograd.

    Parameters in `p` have shape [S, 1] (S parameter vectors at once), `x` columns shape [n]."""
    import torch

    params = tuple(params)

    def law_fn(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
        xt = {c: torch.tensor(np.asarray(v, dtype=float)) for c, v in x.items()}

        def f_of(pt: Any) -> Any:
            pred = fn({n: pt[:, i:i + 1] for i, n in enumerate(params)}, xt)
            pred = pred.expand(pt.shape[0], len(next(iter(xt.values()))))
            return torch.log(pred) if space == "log" else pred

        pt = torch.tensor(np.asarray(p, dtype=float))
        with torch.no_grad():
            f = f_of(pt).numpy()
        if not jac:
            return f, None
        try:  # one Jacobian per parameter vector, all at once
            J = torch.func.vmap(torch.func.jacrev(lambda q: f_of(q[None])[0]))(pt)
        except Exception:  # a law torch.func cannot batch: one vector at a time
            J = torch.stack([torch.autograd.functional.jacobian(lambda q: f_of(q[None])[0], row) for row in pt])
        return f, J.numpy()

    return Law(name, f"user law {name}", params, tuple(columns), law_fn, grid, space=space, per_k=per_k)


def get_law(law: str | Law) -> Law:
    """A registered law by name (or the Law itself); an unknown name is a one-line ConfigError."""
    if isinstance(law, Law):
        return law
    if law not in LAWS:
        from ksir.errors import ConfigError

        raise ConfigError("law", law, sorted(LAWS))
    return LAWS[law]
