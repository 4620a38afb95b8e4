"""Quantization-aware training (weights at k bits, optional activations) and k-SIR attention quantization.

q = QATConfig.from_mapping(cfg.qat)
summary = prepare_qat(model, q, calib)        # in place; then train as usual (ksir.train.train_model)
save_qat_checkpoint(model, tok, path, meta, q, summary); model = load_qat_model(path)

The data types, codebooks, layer selection and total-bit accounting are those of `ksir.quant`.
"""

from __future__ import annotations

from ksir.qat.config import (
    TERNARY_EXACT_BITS,
    AttentionQATConfig,
    DistillConfig,
    QATConfig,
    validate_qat_config,
)

# Torch-backed names load on first use (PEP 562): `ksir.qat.config` stays importable without torch.
_LAZY = {
    **dict.fromkeys(["ATTN_IMPLEMENTATION", "KSIRQuant", "calibrate_ksir", "enable_ksir_attention", "register"],
                    "ksir.qat.attention"),
    **dict.fromkeys(["fake_quant_activation", "fake_quant_weight", "stretched_round"], "ksir.qat.fake_quant"),
    **dict.fromkeys(["QATLinear", "QATSummary", "attention_constants", "is_qat_checkpoint", "is_qat_param_name",
                     "load_qat_model", "prepare_qat", "save_qat_checkpoint", "split_state"], "ksir.qat.model"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATTN_IMPLEMENTATION",
    "TERNARY_EXACT_BITS",
    "AttentionQATConfig",
    "DistillConfig",
    "KSIRQuant",
    "QATConfig",
    "QATLinear",
    "QATSummary",
    "attention_constants",
    "calibrate_ksir",
    "enable_ksir_attention",
    "fake_quant_activation",
    "fake_quant_weight",
    "is_qat_checkpoint",
    "is_qat_param_name",
    "load_qat_model",
    "prepare_qat",
    "register",
    "save_qat_checkpoint",
    "split_state",
    "stretched_round",
    "validate_qat_config",
]
