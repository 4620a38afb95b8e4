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
    if q.layer_bits:  # a rule that names no layer fails here, before any compute
        from ksir.quant.layers import rule_plan

        rule_plan(names, q)
    return {n: tuple(get_weight(modules[n]).shape) for n in names}


def _quantize_model(model: nn.Module, q: QuantConfig, calib: torch.Tensor | None) -> QuantSummary:
    from ksir.errors import ConfigError
    from ksir.quant.bits import summarize

    shapes = selected_shapes(model, q)
    names = list(shapes)
    modules = dict(model.named_modules())
    if q.unquantized:
        return summarize(model, q, {}, {})
    if needs_calibration(q) and calib is None:
        if q.act.on and q.act.scales == "static":
            why = "act.scales=static"
        elif q.method == "gptq":
            why = "method=gptq"
        elif q.allocate.on:
            why = "allocate (measured per-layer sensitivities)"
        elif q.smooth.method != "none":
            why = f"smooth.method={q.smooth.method}"
        elif q.outlier.mode == "activation":
            why = "outlier.mode=activation"
        else:
            why = "lowrank.whiten=activation"
        raise ConfigError(
            "calib", None, "a LongTensor [n_sequences, seq_len] of token ids", f"{why} needs data"
        )
    if calib is not None:
        calib = calib[: q.calib_sequences]
    layers = {n: modules[n] for n in names}
    if q.kv.on:  # checked first: a model whose attention cannot be reached fails before any work
        from ksir.quant.activations import quantize_kv_cache

        quantize_kv_cache(model, q.kv)
    if q.rotate == "hadamard":
        from ksir.quant.rotate import rotate_layers

        rotate_layers(layers)
    smoothed = None
    if q.smooth.method != "none":
        from ksir.quant.blockwise import make_grid, quantize_weight
        from ksir.quant.smooth import smooth_layers

        grid = make_grid(q) if q.weights_quantized else None
        smoothed = smooth_layers(model, layers, q, calib,
                                 quantize=lambda w: quantize_weight(w, grid, q.granularity, q.blocksize))
    plan, sens = None, None
    if q.per_layer:
        from ksir.quant.layers import layer_plan

        plan, sens = layer_plan(model, layers, q, calib)
    keep = _quantize_weights(model, q, layers, calib, plan) if q.weights_quantized else {}
    if q.act.on:
        from ksir.quant.activations import quantize_activations

        quantize_activations(model, layers, q.act, calib, q.gptq.batch_size)
    summary = summarize(model, q, shapes if q.weights_quantized else {}, keep, plan)
    summary.sensitivity, summary.smooth = sens, smoothed
    return summary


def _quantize_weights(model: nn.Module, q: QuantConfig, layers: dict[str, nn.Module],
                      calib: torch.Tensor | None, plan: dict[str, float] | None = None) -> dict[str, int]:
    """The weights at k bits (RTN or GPTQ, outlier columns, low rank); returns the kept columns per layer.
    plan: per-layer k (`ksir.quant.layers`), 16 leaving a layer as it is."""
    from ksir.quant.blockwise import make_grid, quantize_weight
    from ksir.quant.select import get_weight, set_weight

    names = list(layers)
    if q.factorized:
        from ksir.quant.lowrank import factorize_layers

        factorize_layers(list(layers.values()), q)
        return {}
    from ksir.quant.outliers import outlier_columns

    keep = outlier_columns(model, names, q, calib)
    correcting = q.lowrank.mode == "correct"
    if correcting:
        from ksir.quant.lowrank import correct_layers, input_rms

        originals = {n: get_weight(m).detach().clone() for n, m in layers.items()}
        rms = input_rms(model, names, calib, q.gptq.batch_size) if q.lowrank.whiten == "activation" else {}
    if plan is None:
        grid = make_grid(q)
    else:
        from ksir.quant.layers import at_bits, is_kept

        by_k = {k: make_grid(at_bits(q, k)) for k in set(plan.values()) if not is_kept(k)}
        grid = {n: by_k[k] for n, k in plan.items() if not is_kept(k)}
        names = list(grid)
        layers = {n: layers[n] for n in names}
    if q.method == "gptq":
        from ksir.quant.gptq import gptq_quantize_model

        gptq_quantize_model(model, names, q, grid, calib, keep)
    else:
        for n, m in layers.items():
            g = grid[n] if isinstance(grid, dict) else grid
            set_weight(m, quantize_weight(get_weight(m), g, q.granularity, q.blocksize, keep.get(n)))
    if correcting:
        correct_layers(layers, originals, q, rms)
    return {n: int(c.numel()) for n, c in keep.items()}
