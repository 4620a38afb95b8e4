"""Validation of a `quant` config: every value that cannot run is one ConfigError naming its key, before any
compute. Apart from the dataclasses (`ksir.quant.config`) because it reads the packed backends' registry
(`ksir.quant.backends`), which itself reads the config: config <- backends <- validate, no circle."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

from ksir.errors import ConfigError
from ksir.quant.backends import SIMULATED, format_for
from ksir.quant.config import (
    LOWRANK_BITS,
    LOWRANK_MODES,
    LOWRANK_WHITEN,
    MEASURE_DTYPES,
    OUTLIER_MODES,
    SCALE_BITS,
    SCALE_SEARCHES,
    ZERO_POINTS,
    QuantConfig,
)
from ksir.quant.vocab import DTYPE_BITS, FLOAT_DEFAULT_EXPONENT_BITS, GRANULARITIES, METHODS, UNQUANTIZED_BITS


def _is_number(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_quant_config(q: QuantConfig, row_sizes: Iterable[int] | None = None) -> None:
    """Raise ConfigError for any value that cannot run; `row_sizes` are the in_features of the layers to quantize."""
    row_sizes = list(row_sizes) if row_sizes is not None else None
    if q.method not in METHODS:
        raise ConfigError("quant.method", q.method, METHODS)
    if q.dtype not in DTYPE_BITS:
        raise ConfigError("quant.dtype", q.dtype, list(DTYPE_BITS))
    for key, pats in (("quant.include", q.include), ("quant.exclude", q.exclude)):
        for p in pats or []:
            try:
                re.compile(p)
            except (re.error, TypeError) as e:
                raise ConfigError(key, p, "Python regular expressions", str(e)) from None
    if not _is_number(q.bits) or q.bits < 1 or q.bits > UNQUANTIZED_BITS:
        raise ConfigError("quant.bits", q.bits, "a number in 1..16 (16 = unquantized)")
    _validate_lowrank(q, row_sizes)
    _validate_heal(q)
    # Names are checked whatever applies: a 16-bit job ignores the granularity, but `quant.granularity=row` is a
    # typo, not a setting (it was accepted silently).
    for key, value, allowed in (("quant.granularity", q.granularity, GRANULARITIES),
                                ("quant.zero_point", q.zero_point, ZERO_POINTS),
                                ("quant.scale_bits", q.scale_bits, SCALE_BITS),
                                ("quant.scale_search", q.scale_search, SCALE_SEARCHES),
                                ("quant.outlier.mode", q.outlier.mode, OUTLIER_MODES)):
        if value not in allowed:
            raise ConfigError(key, value, allowed)
    if q.unquantized:
        format_for(q)  # only the backend's name is checked: a 16-bit job stores nothing packed
        return  # identity: nothing else is used
    dtype_bits = DTYPE_BITS[q.dtype]
    if q.bits not in dtype_bits and not (q.factorized and q.bits == UNQUANTIZED_BITS):
        why = "post-training quantization needs integer bits (fractional bits such as 1.58 are for QAT)"
        if float(q.bits).is_integer():
            why = f"dtype {q.dtype} is not defined at {q.bits} bits"
        raise ConfigError("quant.bits", q.bits, [*dtype_bits, UNQUANTIZED_BITS], f"{why} (quant.dtype={q.dtype})")
    k = int(q.bits)
    if q.granularity not in GRANULARITIES:
        raise ConfigError("quant.granularity", q.granularity, GRANULARITIES)
    if q.granularity == "block":
        if not isinstance(q.blocksize, int) or isinstance(q.blocksize, bool) or q.blocksize < 2:
            raise ConfigError("quant.blocksize", q.blocksize, "an integer >= 2 that divides every row")
        bad = sorted({r for r in (row_sizes or []) if r % q.blocksize})
        if bad:
            raise ConfigError(
                "quant.blocksize",
                q.blocksize,
                "a divisor of every row size",
                f"does not divide the rows (in_features) {bad[:5]}",
            )
    if q.zero_point not in ZERO_POINTS:
        raise ConfigError("quant.zero_point", q.zero_point, ZERO_POINTS)
    if q.scale_bits not in SCALE_BITS:
        raise ConfigError("quant.scale_bits", q.scale_bits, SCALE_BITS)
    if q.scale_search not in SCALE_SEARCHES:
        raise ConfigError("quant.scale_search", q.scale_search, SCALE_SEARCHES)
    if q.scale_search == "mse":
        if not isinstance(q.mse_grid, int) or q.mse_grid < 2:
            raise ConfigError("quant.mse_grid", q.mse_grid, "an integer >= 2")
        if not _is_number(q.mse_min_ratio) or not 0 < q.mse_min_ratio < 1:
            raise ConfigError("quant.mse_min_ratio", q.mse_min_ratio, "a number in (0, 1)")
    if q.dtype == "float" and q.exponent_bits is not None:
        e = q.exponent_bits
        if not isinstance(e, int) or isinstance(e, bool) or not 1 <= e <= k - 1:
            raise ConfigError(
                "quant.exponent_bits",
                e,
                f"null (default {FLOAT_DEFAULT_EXPONENT_BITS[k]}) or 1..{k - 1}",
                f"a {k}-bit float has one sign bit",
            )
    if not isinstance(q.subnormals, bool):
        raise ConfigError("quant.subnormals", q.subnormals, [True, False])
    if q.dtype == "codebook":
        cb = q.codebook
        if cb is None or not isinstance(cb, (list, tuple)) or not all(_is_number(v) for v in cb):
            raise ConfigError("quant.codebook", cb, "a list of finite numbers", "dtype=codebook needs one")
        if not 2 <= len(cb) <= 2**k or len(set(cb)) != len(cb) or max(abs(v) for v in cb) == 0:
            raise ConfigError("quant.codebook", cb, f"2..{2**k} distinct values, not all zero (bits={k})")
    o = q.outlier
    if o.mode not in OUTLIER_MODES:
        raise ConfigError("quant.outlier.mode", o.mode, OUTLIER_MODES)
    if not _is_number(o.fraction) or not 0 <= o.fraction < 1:
        raise ConfigError("quant.outlier.fraction", o.fraction, "a number in [0, 1)")
    if not isinstance(q.calib_sequences, int) or q.calib_sequences < 1:
        raise ConfigError("quant.calib_sequences", q.calib_sequences, "an integer >= 1")
    _validate_backend(q)
    g = q.gptq
    if not _is_number(g.damp) or g.damp <= 0:
        raise ConfigError("quant.gptq.damp", g.damp, "a number > 0")
    if not isinstance(g.act_order, bool):
        raise ConfigError("quant.gptq.act_order", g.act_order, [True, False])
    for key, v in (("block_columns", g.block_columns), ("batch_size", g.batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"quant.gptq.{key}", v, "an integer >= 1")


def _validate_backend(q: QuantConfig) -> None:
    format_for(q)  # one line naming what the backend cannot store
    if q.backend == SIMULATED:
        return
    m = q.measure
    if m.dtype not in MEASURE_DTYPES:
        raise ConfigError("quant.measure.dtype", m.dtype, MEASURE_DTYPES)
    for key in ("prompt_len", "prefill_batch", "decode_tokens", "repeats"):
        v = getattr(m, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"quant.measure.{key}", v, "an integer >= 1")
    if not m.decode_batches or any(not isinstance(b, int) or isinstance(b, bool) or b < 1 for b in m.decode_batches):
        raise ConfigError("quant.measure.decode_batches", m.decode_batches, "a non-empty list of integers >= 1")


def _validate_lowrank(q: QuantConfig, row_sizes: Iterable[int] | None = None) -> None:
    lr = q.lowrank
    if lr.mode not in LOWRANK_MODES:
        raise ConfigError("quant.lowrank.mode", lr.mode, LOWRANK_MODES)
    if lr.mode == "none":
        return
    if not _is_number(lr.rank) or lr.rank <= 0 or (lr.rank >= 1 and not float(lr.rank).is_integer()):
        raise ConfigError("quant.lowrank.rank", lr.rank, "an integer rank >= 1, or a fraction of min(out, in) in (0, 1)")
    if lr.rank >= 1 and row_sizes and int(lr.rank) > min(row_sizes):
        raise ConfigError("quant.lowrank.rank", lr.rank, f"<= {min(row_sizes)} (the smallest in_features of the layers "
                          "to quantize), or a fraction of min(out, in) in (0, 1)")
    if lr.bits not in LOWRANK_BITS:
        raise ConfigError("quant.lowrank.bits", lr.bits, LOWRANK_BITS)
    if lr.whiten not in LOWRANK_WHITEN:
        raise ConfigError("quant.lowrank.whiten", lr.whiten, LOWRANK_WHITEN)
    if lr.mode == "correct" and float(q.bits) == UNQUANTIZED_BITS:
        raise ConfigError("quant.lowrank.mode", lr.mode, why="a correction corrects a k-bit quantization: set "
                          "quant.bits below 16 (or use lowrank.mode=factorize)")
    if lr.mode == "factorize" and lr.whiten != "none":
        raise ConfigError("quant.lowrank.whiten", lr.whiten, ["none"], why="factor pairs replace the weight by its "
                          "truncated SVD; whitening applies to corrections (lowrank.mode=correct)")
    if lr.mode == "factorize" and (q.method != "rtn" or q.outlier.mode != "none"):
        raise ConfigError("quant.lowrank.mode", lr.mode, why="factor pairs are quantized round-to-nearest without "
                          "outlier columns (set quant.method=rtn quant.outlier.mode=none)")
    if q.backend != "simulated":
        raise ConfigError("quant.backend", q.backend, why="no packed kernel for low-rank factors in any backend; "
                          "use quant.backend=simulated")


def _validate_heal(q: QuantConfig) -> None:
    h = q.heal
    for key in ("steps", "batch_size"):
        v = getattr(h, key)
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if key == "steps" else 1):
            raise ConfigError(f"quant.heal.{key}", v, "an integer >= " + ("0 (0 = off)" if key == "steps" else "1"))
    if h.steps == 0:
        return
    for key in ("lr", "temperature"):
        v = getattr(h, key)
        if not _is_number(v) or v <= 0:
            raise ConfigError(f"quant.heal.{key}", v, "a number > 0")
    if q.unquantized:
        raise ConfigError("quant.heal.steps", h.steps, why="healing distils a quantized model into its 16-bit self: "
                          "set quant.bits below 16 (or a lowrank mode)")
    if q.backend != "simulated":
        raise ConfigError("quant.backend", q.backend, why="a packed model is not fine-tuned here (quant.heal needs "
                          "quant.backend=simulated)")
