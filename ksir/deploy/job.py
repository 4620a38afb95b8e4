"""A packed quantize job: the 16-bit reference, ksir's simulated quantization and the packed model, side by side.

All three start from the same 16-bit weights (the base model cast to `quant.measure.dtype`), in one process:
1. the 16-bit reference: bytes, evaluation (loss, peak memory), prefill and decode speed;
2. ksir's simulated quantization of the same config, evaluated in the same dtype (`compare_simulated`);
3. the packed model (the backend's library quantizes the selected layers itself): the same figures.
The record's metrics are the packed model's; `deploy` holds every measured figure and the 16-bit reference's.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.metadata
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ksir.deploy import measure
from ksir.quant import quantize_model, selected_shapes
from ksir.quant.backends import BACKENDS, PackedFormat
from ksir.quant.bits import QuantSummary, summarize
from ksir.quant.config import QuantConfig

Evaluate = Callable[[nn.Module, bool], dict[str, float]]  # (model, with zero-shot tasks?) -> metrics


def formula_summary(model: nn.Module, q: QuantConfig) -> tuple[QuantSummary, list[str]]:
    """The bit accounting of q on this (unquantized) model, and the layers it selects."""
    shapes = selected_shapes(model, q)
    return summarize(model, q, shapes, {}), list(shapes)


def _measured(model: nn.Module, evaluate: Evaluate, full: bool, tokens: torch.Tensor, q: QuantConfig,
              device: torch.device) -> tuple[dict[str, float], dict[str, Any]]:
    nbytes = measure.stored_bytes(model)
    metrics, peak, how = measure.peak_memory(lambda: evaluate(model, full), nbytes, device)
    return metrics, {"bytes": nbytes, "peak_eval_bytes": peak, "peak_method": how,
                     **measure.speed(model, tokens, q.measure, device)}


def quantize_packed(model: nn.Module, q: QuantConfig, fmt: PackedFormat, evaluate: Evaluate, tokens: torch.Tensor,
                    device: torch.device) -> tuple[QuantSummary, dict[str, float], dict[str, Any]]:
    """(formula accounting, the packed model's metrics, the `deploy` record section). `model` is not changed."""
    dtype = getattr(torch, q.measure.dtype)
    summary, names = formula_summary(model, q)
    backend = BACKENDS[q.backend]
    ref = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
    ref_metrics, ref_figures = _measured(ref, evaluate, False, tokens, q, device)
    sim_loss = None
    if q.measure.compare_simulated:
        sim = copy.deepcopy(ref)  # quantized in fp32 layer by layer, stored back in the 16-bit dtype
        quantize_model(sim, q)
        sim_loss = evaluate(sim, False)["val_loss"]
        del sim
    t0 = time.time()
    backend.pack(ref, q, names, fmt, dtype, device)
    pack_time = time.time() - t0
    metrics, figures = _measured(ref, evaluate, True, tokens, q, device)
    formula_bytes = summary.total_bits / 8
    deploy = {
        "backend": backend.name, "format": fmt.name + ("-dq" if q.scale_bits == 8 else ""), "packed": fmt.packed,
        "library": f"{backend.pip} {importlib.metadata.version(backend.pip)}", "torch": torch.__version__,
        "device": measure.device_name(device), "dtype": q.measure.dtype, "settings": dataclasses.asdict(q.measure),
        **figures, "formula_bytes": formula_bytes, "measured_over_formula": figures["bytes"] / formula_bytes,
        "pack_time_s": pack_time, "reference": {"val_loss": ref_metrics["val_loss"], **ref_figures},
        "simulated_val_loss": sim_loss,
        "packed_minus_simulated": None if sim_loss is None else metrics["val_loss"] - sim_loss,
    }
    return summary, {**metrics, "quant_time_s": pack_time}, deploy
