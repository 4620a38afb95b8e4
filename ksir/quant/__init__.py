"""Simulated k-bit post-training quantization of language-model weights (round-to-nearest and GPTQ).

q = QuantConfig.from_mapping(cfg.quant)
summary = quantize_model(model, q, calib)   # in place; summary.total_bits is the scaling-law x-axis
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ksir.quant.config import GPTQConfig, OutlierConfig, QuantConfig
from ksir.quant.validate import validate_quant_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ksir.quant.bits import QuantSummary

__all__ = [
    "DTYPES",
    "GPTQConfig",
    "OutlierConfig",
    "QuantConfig",
    "QuantSummary",
    "needs_calibration",
    "quantize_model",
    "quantized_linear_names",
    "selected_shapes",
    "validate_quant_config",
]
# Torch-backed names load on first use (PEP 562): `ksir.quant.config` stays importable without torch.
_LAZY = {"DTYPES": "ksir.quant.dtypes", "QuantSummary": "ksir.quant.bits",
         "quantized_linear_names": "ksir.quant.select"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def needs_calibration(q: QuantConfig) -> bool:
    """GPTQ, activation-based outliers and whitened low-rank corrections need calibration token ids."""
    return q.needs_calibration


def quantize_model(model: nn.Module, q: QuantConfig, calib: torch.Tensor | None = None) -> QuantSummary:
    """Fake-quantize the selected linear layers of `model` in place and return the bit accounting.

    calib: LongTensor [n_sequences, seq_len] of token ids, needed by GPTQ and activation outliers."""
    import torch

    with torch.no_grad():
        return _quantize_model(model, q, calib)


def selected_shapes(model: nn.Module, q: QuantConfig) -> dict[str, tuple[int, int]]:
    """The linear layers q quantizes, name -> [out, in] (model order), after checking q against their rows."""
    from ksir.quant.select import get_weight, quantized_linear_names, row_size

    modules = dict(model.named_modules())
    names = quantized_linear_names(model, q)
    validate_quant_config(q, [row_size(modules[n]) for n in names])
    return {n: tuple(get_weight(modules[n]).shape) for n in names}


def _quantize_model(model: nn.Module, q: QuantConfig, calib: torch.Tensor | None) -> QuantSummary:
    from ksir.errors import ConfigError
    from ksir.quant.bits import summarize
    from ksir.quant.blockwise import make_grid, quantize_weight
    from ksir.quant.select import get_weight, set_weight

    shapes = selected_shapes(model, q)
    names = list(shapes)
    modules = dict(model.named_modules())
    if q.unquantized:
        return summarize(model, q, {}, {})
    if q.factorized:
        from ksir.quant.lowrank import factorize_layers

        factorize_layers([modules[n] for n in names], q)
        return summarize(model, q, shapes, {})
    if needs_calibration(q) and calib is None:
        if q.method == "gptq":
            why = "method=gptq"
        elif q.outlier.mode == "activation":
            why = "outlier.mode=activation"
        else:
            why = "lowrank.whiten=activation"
        raise ConfigError(
            "calib", None, "a LongTensor [n_sequences, seq_len] of token ids", f"{why} needs data"
        )
    if calib is not None:
        calib = calib[: q.calib_sequences]
    from ksir.quant.outliers import outlier_columns

    keep = outlier_columns(model, names, q, calib)
    correcting = q.lowrank.mode == "correct"
    if correcting:
        from ksir.quant.lowrank import correct_layers, input_rms

        originals = {n: get_weight(modules[n]).detach().clone() for n in names}
        rms = input_rms(model, names, calib, q.gptq.batch_size) if q.lowrank.whiten == "activation" else {}
    grid = make_grid(q)
    if q.method == "gptq":
        from ksir.quant.gptq import gptq_quantize_model

        gptq_quantize_model(model, names, q, grid, calib, keep)
    else:
        for n in names:
            m = modules[n]
            set_weight(m, quantize_weight(get_weight(m), grid, q.granularity, q.blocksize, keep.get(n)))
    if correcting:
        correct_layers({n: modules[n] for n in names}, originals, q, rms)
    return summarize(model, q, shapes, {n: int(c.numel()) for n, c in keep.items()})
