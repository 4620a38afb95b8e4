"""The checks of a `quant` config that need more than its values: the model's row sizes and the packed
backends' registry (`ksir.quant.backends`, which reads the config: config <- backends <- validate, no circle).
Every value alone was checked when the config was built (`QuantConfig`)."""

from __future__ import annotations

from collections.abc import Iterable

from ksir.errors import ConfigError
from ksir.quant.backends import SIMULATED, format_for
from ksir.quant.config import MEASURE_DTYPES, QuantConfig
from ksir.quant.format import is_int


def validate_quant_config(q: QuantConfig, row_sizes: Iterable[int] | None = None) -> None:
    """Raise ConfigError for anything that cannot run; `row_sizes` are the in_features of the layers to quantize."""
    row_sizes = list(row_sizes) if row_sizes is not None else None
    lr = q.lowrank
    if lr.mode != "none" and lr.rank >= 1 and row_sizes and int(lr.rank) > min(row_sizes):
        raise ConfigError("quant.lowrank.rank", lr.rank, f"<= {min(row_sizes)} (the smallest in_features of the layers "
                          "to quantize), or a fraction of min(out, in) in (0, 1)")
    if q.unquantized:
        format_for(q)  # only the backend's name is checked: a 16-bit job stores nothing packed
        return
    q.check_rows(row_sizes)
    _validate_backend(q)


def _validate_backend(q: QuantConfig) -> None:
    format_for(q)  # one line naming what the backend cannot store
    if q.backend == SIMULATED:
        return
    m = q.measure
    if m.dtype not in MEASURE_DTYPES:
        raise ConfigError("quant.measure.dtype", m.dtype, MEASURE_DTYPES)
    for key in ("prompt_len", "prefill_batch", "decode_tokens", "repeats"):
        v = getattr(m, key)
        if not is_int(v) or v < 1:
            raise ConfigError(f"quant.measure.{key}", v, "an integer >= 1")
    if not m.decode_batches or any(not is_int(b) or b < 1 for b in m.decode_batches):
        raise ConfigError("quant.measure.decode_batches", m.decode_batches, "a non-empty list of integers >= 1")
