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

from analysis.settings import REFERENCE_BITS

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
    # Data-dependent parameters (eff(k)): setup(columns, reference precision) -> context.
    setup: Callable[[dict[str, Array], float], dict[str, Any]] | None = None
    size_column: str = "n_params"  # what "model size" means for degenerate-input checks and held-out fits
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)  # raw-parameter box (beyond BOUNDS)
    # Parameters along the size axis (E, A, alpha of a power law): the size dependence is identified only with
    # more distinct sizes than these, and a held-out refit only if more remain after the largest are left out.
    size_params: int = 3
    # Per-precision parameters relative to the reference precision (eff(k), with eff(16) = 1): a group needs
    # runs at the reference and at another precision in each precision column listed here.
    reference_columns: tuple[str, ...] = ()
    paired: bool = False  # fitted on paired differences: each run's metric minus its base model's baseline
    optional: tuple[str, ...] = ()  # columns read where the table has them (more precisions)
    headline: bool = True  # a candidate for the answer (a degradation law answers another question)
    absorbs: tuple[str, ...] = ()  # scheme fields the law models through its own columns: not groups of their own

    @property
    def min_sizes(self) -> int:
        return self.size_params + 1

    def param_names(self, ctx: dict[str, Any]) -> list[str]:
        return list(self.params) + list(ctx.get("extra_params", []))

    def kind(self, name: str) -> str:
        """How a parameter's interval is judged: "log" (the log of a positive scale: identified unless its
        interval spans orders of magnitude), "exponent" (positive: identified unless the interval reaches 0 or
        spans orders of magnitude), "linear" (identified unless the interval reaches a bound)."""
        if name.startswith("log_") or name in self.report and self.report[name][1] is np.exp:
            return "log"
        if name.split("_")[0] in EXPONENTS:
            return "exponent"
        return "linear"

    def box(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the raw parameters (the law's own, else BOUNDS by name or prefix)."""
        lo, hi = [], []
        for n in names:
            b = self.bounds.get(n) or BOUNDS.get(n) or next(
                (v for k, v in BOUNDS.items() if k.endswith("*") and n.startswith(k[:-1])), (-np.inf, np.inf))
            lo.append(b[0])
            hi.append(b[1])
        return np.array(lo, float), np.array(hi, float)

    def context(self, cols: dict[str, Array], reference: float = REFERENCE_BITS) -> dict[str, Any]:
        return {**(self.setup(cols, reference) if self.setup else {}), "reference": float(reference)}

    def label(self, name: str) -> str:
        return self.report[name][0] if name in self.report else name

    def predict(self, p: Array, x: dict[str, Array], ctx: dict[str, Any]) -> Array:
        """Metric (linear scale) at the points x; p [P] -> [n], p [S, P] -> [S, n]."""
        p = np.asarray(p, dtype=float)
        f, _ = self.fn(np.atleast_2d(p), x, ctx, False)
        out = np.exp(f) if self.space == "log" else f
        return out[0] if p.ndim == 1 else out


EXPONENTS = ("alpha", "beta", "gamma")  # parameter names (or prefixes before "_") that are positive exponents


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


def _kaplan(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """log L = alpha_D * log((N_c / N)^(alpha_N / alpha_D) + D_c / D), in log N_c and log D_c."""
    lnc, ldc, an, ad = (_col(p, i) for i in range(4))
    ln, ld = np.log(x["n_params"])[None, :], np.log(x["train_tokens"])[None, :]
    u, v = an / ad * (lnc - ln), ldc - ld
    if not jac:
        g, _ = _lse([u, v], None)
        return ad * g, None
    sh, P = np.broadcast_shapes(u.shape, v.shape), p.shape[1]
    Ju = np.zeros((*sh, P))
    Ju[..., 0] = np.broadcast_to(an / ad, sh)
    Ju[..., 2] = np.broadcast_to((lnc - ln) / ad, sh)
    Ju[..., 3] = np.broadcast_to(-u / ad, sh)
    g, Jg = _lse([np.broadcast_to(u, sh), np.broadcast_to(v, sh)], [Ju, _onehot(sh, P, 1)])
    J = ad[..., None] * Jg
    J[..., 3] += g
    return ad * g, J


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


def _eff_setup(cols: dict[str, Array], reference: float) -> dict[str, Any]:
    ks = sorted({float(k) for k in cols["bits"] if float(k) != reference})
    return {"eff_ks": ks, "extra_params": [f"log_eff_{k:g}" for k in ks]}


def _efficiency(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """QuEST / Frantar et al.: one free log eff(k) per bit-width present (eff(16) = 1 is fixed)."""
    e, a, alpha = _col(p, 0), _col(p, 1), _col(p, 2)
    base = 5 if ctx.get("data_term") else 3
    k = x["bits"]
    idx = np.full(k.shape, -1)
    for i, kk in enumerate(ctx["eff_ks"]):
        idx[k == kk] = base + i
    unknown = (idx < 0) & (k != ctx.get("reference", REFERENCE))
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


def _per_precision(col: str, prefix: str) -> Callable[[dict[str, Array], float], dict[str, Any]]:
    """Setup of a law with one free log efficiency per precision of `col` (the reference precision's is 0)."""
    def setup(cols: dict[str, Array], reference: float) -> dict[str, Any]:
        ks = sorted({float(k) for k in cols[col] if float(k) != reference})
        return {f"{prefix}_ks": ks, "extra_params": [f"log_{prefix}_{k:g}" for k in ks]}

    return setup


def _index(values: Array, ks: list[float], first: int, law: str, reference: float) -> Array:
    """Parameter column of each row's precision (first + position in ks), -1 at the reference precision."""
    idx = np.full(values.shape, -1)
    for i, kk in enumerate(ks):
        idx[values == kk] = first + i
    unknown = (idx < 0) & (values != reference)
    if unknown.any():
        raise ValueError(f"law {law} has no efficiency for precisions {sorted(set(values[unknown].tolist()))[:5]}: "
                         "it predicts only at the precisions it was fitted on")
    return idx


def _quartet(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """Castro et al. (Quartet): the forward precision scales parameters, the backward precision scales data."""
    e, a, alpha, b, beta = (_col(p, i) for i in range(5))
    fk, bk = ctx["effn_ks"], ctx["effd_ks"]
    ref = ctx.get("reference", REFERENCE)
    i_f = _index(x["fwd_bits"], fk, 5, "quartet", ref)
    i_b = _index(x["bwd_bits"], bk, 5 + len(fk), "quartet", ref)
    ln = np.log(x["n_params"])[None, :] + np.where(i_f >= 0, p[:, np.maximum(i_f, 0)], 0.0)
    ld = np.log(x["train_tokens"])[None, :] + np.where(i_b >= 0, p[:, np.maximum(i_b, 0)], 0.0)
    t1, t2 = a - alpha * ln, b - beta * ld
    sh = np.broadcast_shapes(t1.shape, t2.shape)
    t1, t2 = np.broadcast_to(t1, sh), np.broadcast_to(t2, sh)
    if not jac:
        return _lse([np.broadcast_to(e, sh), t1, t2], None)
    P = p.shape[1]
    J1, J2 = _onehot(sh, P, 1), _onehot(sh, P, 3)
    J1[..., 2], J2[..., 4] = -ln, -ld
    rows = np.nonzero(i_f >= 0)[0]
    J1[:, rows, i_f[rows]] = -alpha
    rows = np.nonzero(i_b >= 0)[0]
    J2[:, rows, i_b[rows]] = -beta
    return _lse([np.broadcast_to(e, sh), t1, t2], [_onehot(sh, P, 0), J1, J2])


def _quartet_setup(cols: dict[str, Array], reference: float) -> dict[str, Any]:
    f, b = _per_precision("fwd_bits", "effn")(cols, reference), _per_precision("bwd_bits", "effd")(cols, reference)
    return {**f, **b, "extra_params": f["extra_params"] + b["extra_params"]}


PRECISION_COLUMNS = {"bits": "w", "act_bits": "act", "kv_bits": "kv"}  # Kumar et al.: weights, activations, KV


def _multi_setup(cols: dict[str, Array], reference: float) -> dict[str, Any]:
    present = [c for c in PRECISION_COLUMNS if c in cols]
    if len(present) < 2:
        raise ValueError("law precision_multi needs act_bits or kv_bits beside bits (with weights alone, use "
                         "the law precision)")
    return {"precisions": present, "extra_params": [f"log_gamma_{PRECISION_COLUMNS[c]}" for c in present]}


def _precision_multi(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """Kumar et al.: N_eff = N * prod over precisions x of (1 - exp(-P_x / gamma_x))."""
    e, a, alpha = _col(p, 0), _col(p, 1), _col(p, 2)
    us = [x[c][None, :] / np.exp(_col(p, 3 + i)) for i, c in enumerate(ctx["precisions"])]
    log_neff = np.log(x["n_params"])[None, :] + sum(np.log(-np.expm1(-u)) for u in us)
    t1 = a - alpha * log_neff
    sh, P = t1.shape, p.shape[1]
    if not jac:
        return _lse([np.broadcast_to(e, sh), t1], None)
    J1 = _onehot(sh, P, 1)
    J1[..., 2] = -log_neff
    with np.errstate(over="ignore"):
        for i, u in enumerate(us):
            J1[..., 3 + i] = alpha * u / np.expm1(u)
    return _lse([np.broadcast_to(e, sh), t1], [_onehot(sh, P, 0), J1])


def _degradation(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """Ouyang et al.: log dL = log c + beta log D - alpha log N - gamma log k (linear in the parameters)."""
    ln, ld, lk = (np.log(x[c])[None, :] for c in ("n_params", "train_tokens", "bits"))
    f = _col(p, 0) - _col(p, 1) * ln + _col(p, 2) * ld - _col(p, 3) * lk
    if not jac:
        return f, None
    J = np.stack(np.broadcast_arrays(np.ones_like(f), -ln, ld, -lk), axis=-1)
    return f, J


def _ptq_degradation(p: Array, x: dict[str, Array], ctx: dict[str, Any], jac: bool):
    """Kumar et al.: log delta = log C_T + gamma_D log D - gamma_N log N - k / gamma_post."""
    ln, ld = np.log(x["n_params"])[None, :], np.log(x["train_tokens"])[None, :]
    u = x["bits"][None, :] / np.exp(_col(p, 3))
    f = _col(p, 0) + _col(p, 1) * ld - _col(p, 2) * ln - u
    if not jac:
        return f, None
    J = np.stack(np.broadcast_arrays(np.ones_like(f), ld, -ln, u), axis=-1)
    return f, J


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


def _no_data(cols: dict[str, Array], reference: float) -> dict[str, Any]:
    return {"data_term": False}


def _data(cols: dict[str, Array], reference: float) -> dict[str, Any]:
    return {"data_term": True}


def _eff_no_data(cols: dict[str, Array], reference: float) -> dict[str, Any]:
    return {**_eff_setup(cols, reference), "data_term": False}


def _eff_data(cols: dict[str, Array], reference: float) -> dict[str, Any]:
    return {**_eff_setup(cols, reference), "data_term": True}


# Where a parameter can sit: beyond these it has no meaning (negative exponents, gamma far outside the
# swept bits) or cannot be told from its bound by any data (a scale of e^-20). A fitted parameter on
# a bound is reported "at bound" and kept out of claims. The floor of log E depends on the data
# (E below 1% of the smallest loss is zero for every purpose) and is set in analysis.fit.prepare.
BOUNDS: dict[str, tuple[float, float]] = {
    "e": (-20.0, 20.0), "a": (-20.0, 80.0), "b": (-20.0, 80.0), "alpha": (0.0, 5.0), "beta": (0.0, 5.0),
    "log_gamma*": (float(np.log(0.05)), float(np.log(64.0))), "log_eff_*": (-12.0, 3.0), "log_s": (-10.0, 10.0),
    "log_effn_*": (-12.0, 3.0), "log_effd_*": (-12.0, 3.0), "log_c": (-40.0, 40.0), "log_ct": (-40.0, 40.0),
    "gamma": (0.0, 20.0), "gamma_d": (0.0, 5.0), "gamma_n": (0.0, 5.0),
}
REFERENCE = REFERENCE_BITS  # the reference precision: eff(REFERENCE) = 1

E_A_ALPHA = {"e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0), "alpha": np.arange(0.0, 2.01, 0.5)}
B_BETA = {"b": np.arange(0.0, 25.1, 5.0), "beta": np.arange(0.0, 2.01, 0.5)}
LOG_SCALES = {"e": ("E", np.exp), "a": ("A", np.exp), "b": ("B", np.exp), "log_gamma": ("gamma", np.exp),
              "log_s": ("s", np.exp), "log_c": ("c", np.exp), "log_ct": ("C_T", np.exp),
              "log_gamma_post": ("gamma_post", np.exp), "log_gamma_w": ("gamma_w", np.exp),
              "log_gamma_act": ("gamma_act", np.exp), "log_gamma_kv": ("gamma_kv", np.exp)}
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
        setup=_eff_no_data, reference_columns=("bits",)),
    Law("efficiency_data", "L(N, D, k) = E + A * (N * eff(k))^(-alpha) + B * D^(-beta), eff(16) = 1",
        ("e", "a", "alpha", "b", "beta"), ("n_params", "bits", "train_tokens"), _efficiency,
        {**E_A_ALPHA, **B_BETA}, report=LOG_SCALES,
        setup=_eff_data, reference_columns=("bits",)),
    Law("chinchilla", "L(N, D) = E + A / N^alpha + B / D^beta  [Hoffmann et al. 2022, Approach 3]",
        ("a", "b", "e", "alpha", "beta"), ("n_params", "train_tokens"), _chinchilla,
        {"a": np.arange(0.0, 25.1, 5.0), "b": np.arange(0.0, 25.1, 5.0), "e": np.arange(-1.0, 1.01, 0.5),
         "alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5)}, report=LOG_SCALES),
    Law("kaplan", "L(N, D) = ((N_c / N)^(alpha_N / alpha_D) + D_c / D)^alpha_D  [Kaplan et al. 2020, eq. 1.5; no "
        "irreducible loss]", ("log_nc", "log_dc", "alpha_n", "alpha_d"), ("n_params", "train_tokens"), _kaplan,
        {"log_nc": [15.0, 25.0, 35.0], "log_dc": [15.0, 25.0, 35.0], "alpha_n": [0.05, 0.1, 0.3],
         "alpha_d": [0.05, 0.1, 0.3]},
        report={"log_nc": ("N_c", np.exp), "log_dc": ("D_c", np.exp)},
        bounds={"log_nc": (0.0, 80.0), "log_dc": (0.0, 80.0), "alpha_n": (1e-3, 5.0), "alpha_d": (1e-3, 5.0)},
        size_params=2),
    Law("quant_degradation", "dL(N, D, k) = c * D^beta / (N^alpha * k^gamma) on paired differences (quantized - "
        "16-bit)  [Ouyang et al. 2024]", ("log_c", "alpha", "beta", "gamma"), ("n_params", "train_tokens", "bits"),
        _degradation, {"log_c": [-8.0, -4.0, 0.0], "alpha": [0.1, 0.5], "beta": [0.1, 0.5], "gamma": [1.0, 5.0]},
        report=LOG_SCALES, size_params=2, paired=True, headline=False),
    Law("ptq_degradation", "delta(N, D, k) = C_T * D^gamma_D / N^gamma_N * exp(-k / gamma_post) on paired "
        "differences  [Kumar et al. 2025]", ("log_ct", "gamma_d", "gamma_n", "log_gamma_post"),
        ("n_params", "train_tokens", "bits"), _ptq_degradation,
        {"log_ct": [-6.0, -2.0, 2.0], "gamma_d": [0.2, 0.6], "gamma_n": [0.2, 0.6], "log_gamma_post": [-1.0, 0.0, 1.0]},
        report=LOG_SCALES, size_params=2, paired=True, headline=False),
    Law("quartet", "L(N, D, P_fwd, P_bwd) = E + A / (N * effN(P_fwd))^alpha + B / (D * effD(P_bwd))^beta, "
        "effN(16) = effD(16) = 1  [Castro et al. 2025, Quartet]", ("e", "a", "alpha", "b", "beta"),
        ("n_params", "train_tokens", "fwd_bits", "bwd_bits"), _quartet, {**E_A_ALPHA, **B_BETA}, report=LOG_SCALES,
        setup=_quartet_setup, reference_columns=("fwd_bits", "bwd_bits"), absorbs=("regime",)),
    Law("precision_multi", "L(N, P_w, P_a, P_kv) = E + A * N_eff^(-alpha), N_eff = N * prod_x (1 - exp(-P_x / "
        "gamma_x)) over weights, activations, KV cache  [Kumar et al. 2025]", ("e", "a", "alpha"), ("n_params", "bits"),
        _precision_multi, {**E_A_ALPHA, "log_gamma_w": np.log([1.0, 3.0]), "log_gamma_act": np.log([1.0, 3.0]),
                           "log_gamma_kv": np.log([1.0, 3.0])}, report=LOG_SCALES, setup=_multi_setup,
        optional=("act_bits", "kv_bits"), absorbs=("act_bits", "kv_bits")),
    Law("sigmoid_bits", "acc(B) = lo + (hi - lo) * sigmoid(s * (log B - m))", ("lo", "hi", "log_s", "m"),
        ("total_bits",), _sigmoid("total_bits", 1.0), {**SIGMOID_GRID, "m": [10.0, 15.0, 20.0, 25.0]},
        space="linear", report=LOG_SCALES, size_column="total_bits", headline=False),
    Law("sigmoid_loss", "acc(L) = lo + (hi - lo) * sigmoid(-s * (L - m))", ("lo", "hi", "log_s", "m"),
        ("val_loss",), _sigmoid("val_loss", -1.0), {**SIGMOID_GRID, "m": [1.0, 2.0, 3.0, 4.0, 6.0]},
        space="linear", report=LOG_SCALES, size_column="val_loss", headline=False),
]}


def custom_law(name: str, fn: Callable[..., Any], params: Sequence[str], columns: Sequence[str],
               grid: dict[str, Sequence[float]], space: str = "log", per_k: bool = False,
               bounds: dict[str, tuple[float, float]] | None = None, formula: str | None = None,
               size_params: int = 3) -> Law:
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

    return Law(name, formula or f"user law {name}", params, tuple(columns), law_fn, grid, space=space, per_k=per_k,
               bounds=dict(bounds or {}), size_params=size_params)


def load_law_file(path: str) -> Law:
    """A law from a Python file (`ksir-fit --law-file mylaw.py`), fitted, bootstrapped and judged like the
    built-in ones. The file defines::

        NAME = "my_chinchilla"                      # how fit.json and the report call it
        COLUMNS = ["n_params", "train_tokens"]      # run columns the law reads
        PARAMS = {"e": {"bounds": (-2, 2), "grid": [-1, 0, 1]}, ...}   # every parameter: box and starts
        def law(p, x):                              # the metric, in torch: p[name] is [S, 1], x[col] is [n]
            return p["e"].exp() + ...
        SPACE = "log"                               # optional: "log" (loss, default) or "linear" (accuracy)
        FORMULA = "L = E + A / N^alpha + B / D^beta"  # optional, for the report
        SIZE_PARAMS = 3                             # optional: parameters along the size axis (default 3)

    A file that does not define these is a one-line ConfigError naming what is missing."""
    import importlib.util
    from pathlib import Path

    from ksir.errors import ConfigError

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("--law-file", str(path), why="no such file")
    spec = importlib.util.spec_from_file_location(f"ksir_user_law_{file.stem}", file)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except Exception as e:  # noqa: BLE001 - a user's file: its error in one line
        raise ConfigError("--law-file", str(path), why=f"cannot be loaded: {type(e).__name__}: {e}") from None
    missing = [a for a in ("NAME", "COLUMNS", "PARAMS", "law") if not hasattr(mod, a)]
    if missing:
        raise ConfigError("--law-file", str(path), why=f"defines no {', '.join(missing)} (see ksir-fit --help)")
    params = dict(mod.PARAMS)
    bad = [n for n, v in params.items() if not isinstance(v, dict) or "bounds" not in v or "grid" not in v]
    if bad:
        raise ConfigError("--law-file", str(path), why=f"PARAMS[{bad[0]!r}] needs 'bounds' (lo, hi) and 'grid' [...]")
    space = getattr(mod, "SPACE", "log")
    if space not in ("log", "linear"):
        raise ConfigError("--law-file", str(path), why=f"SPACE is {space!r}, not 'log' or 'linear'")
    if mod.NAME in LAWS:
        raise ConfigError("--law-file", str(path), why=f"NAME {mod.NAME!r} is a built-in law; pick another")
    return custom_law(str(mod.NAME), mod.law, list(params), list(mod.COLUMNS),
                      {n: list(v["grid"]) for n, v in params.items()}, space=space,
                      bounds={n: tuple(map(float, v["bounds"])) for n, v in params.items()},
                      formula=getattr(mod, "FORMULA", None), size_params=int(getattr(mod, "SIZE_PARAMS", 3)))


def get_law(law: str | Law) -> Law:
    """A registered law by name (or the Law itself); an unknown name is a one-line ConfigError."""
    if isinstance(law, Law):
        return law
    if law not in LAWS:
        from ksir.errors import ConfigError

        raise ConfigError("law", law, sorted(LAWS))
    return LAWS[law]
