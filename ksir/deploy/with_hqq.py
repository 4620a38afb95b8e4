"""HQQ packing: HQQLinear with its proximal optimiser off (method=rtn), so the grid is ksir's int_asym grid."""

from __future__ import annotations

import torch
from torch import nn

from ksir.deploy.layers import as_linear, replace
from ksir.quant.backends import PackedFormat
from ksir.quant.config import QuantConfig


def pack(model: nn.Module, q: QuantConfig, names: list[str], fmt: PackedFormat, dtype: torch.dtype,
         device: torch.device) -> None:
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    HQQLinear.set_backend(HQQBackend.PYTORCH)  # dequantize + matmul: runs on CPU and GPU alike
    for name in names:
        cfg = BaseQuantizeConfig(nbits=int(q.bits), group_size=q.blocksize, axis=1)
        cfg["weight_quant_params"].update(optimize=False, round_zero=q.zero_point == "int")
        lin = as_linear(model.get_submodule(name))
        replace(model, name, HQQLinear(lin, quant_config=cfg, compute_dtype=dtype, device=device.type, del_orig=True))
