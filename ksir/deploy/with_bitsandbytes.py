"""bitsandbytes packing: Linear4bit (NF4 / FP4, optionally double-quantized scales) and Linear8bitLt (LLM.int8())."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ksir.deploy.layers import as_linear, replace
from ksir.quant.backends import PackedFormat
from ksir.quant.config import QuantConfig

INT8_THRESHOLD = 6.0  # LLM.int8()'s outlier threshold (Dettmers et al. 2022; transformers' default)


def pack(model: nn.Module, q: QuantConfig, names: list[str], fmt: PackedFormat, dtype: torch.dtype,
         device: torch.device) -> None:
    """Replace each named linear layer by its bitsandbytes module, quantized from the layer's own weights."""
    import bitsandbytes as bnb

    # LLM.int8() casts bf16 inputs to fp16 for its int8 quantization and says so on every call
    warnings.filterwarnings("ignore", message="MatMul8bitLt: inputs will be cast")
    for name in names:
        lin = as_linear(model.get_submodule(name))
        w = lin.weight.data.detach()
        if fmt.name == "int8":
            new = bnb.nn.Linear8bitLt(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                      has_fp16_weights=False, threshold=INT8_THRESHOLD)
            new.weight = bnb.nn.Int8Params(w.to("cpu", copy=True), requires_grad=False, has_fp16_weights=False)
        else:
            dq = q.scale_bits == 8
            new = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None, compute_dtype=dtype,
                                    compress_statistics=dq, quant_type=fmt.name, quant_storage=torch.uint8)
            new.weight = bnb.nn.Params4bit(w.to("cpu", copy=True), requires_grad=False, quant_type=fmt.name,
                                           compress_statistics=dq, blocksize=q.blocksize, quant_storage=torch.uint8)
        if lin.bias is not None:
            new.bias = nn.Parameter(lin.bias.data.detach().to("cpu", dtype, copy=True), requires_grad=False)
        new = new.to(device)  # bitsandbytes quantizes on the move to a device
        weight = new.weight
        if isinstance(weight, bnb.nn.Params4bit) and not weight.bnb_quantized:
            new.weight = weight._quantize(device.type)  # already on that device: quantize in place
        replace(model, name, new)
