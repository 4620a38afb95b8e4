"""torchao packing: `quantize_` with a weight-only config, restricted to the named layers."""

from __future__ import annotations

import logging

import torch
from torch import nn

from ksir.deploy.layers import as_linear, replace
from ksir.quant.backends import PackedFormat
from ksir.quant.config import QuantConfig


def _config(q: QuantConfig, fmt: PackedFormat):
    logging.getLogger("torchao").setLevel(logging.ERROR)  # its optional CUDA extensions fail to load on CPU
    from torchao.quantization import (
        Float8WeightOnlyConfig,
        Int4WeightOnlyConfig,
        Int8WeightOnlyConfig,
        IntxWeightOnlyConfig,
        MappingType,
    )
    from torchao.quantization.granularity import PerAxis, PerGroup

    if fmt.name == "int8_weight_only":
        return Int8WeightOnlyConfig()
    if fmt.name == "int4_weight_only":
        return Int4WeightOnlyConfig(group_size=q.blocksize, int4_packing_format="tile_packed_to_4d")
    if fmt.name == "float8_weight_only":
        return Float8WeightOnlyConfig()
    gran = PerGroup(q.blocksize) if q.granularity == "block" else PerAxis(0)
    return IntxWeightOnlyConfig(weight_dtype=getattr(torch, f"int{int(q.bits)}"), granularity=gran,
                                mapping_type=MappingType.ASYMMETRIC)


def pack(model: nn.Module, q: QuantConfig, names: list[str], fmt: PackedFormat, dtype: torch.dtype,
         device: torch.device) -> None:
    from torchao.quantization import quantize_

    for name in names:  # Conv1D layers become nn.Linear first: torchao's configs apply to nn.Linear
        replace(model, name, as_linear(model.get_submodule(name)))
    wanted = set(names)
    quantize_(model, _config(q, fmt), filter_fn=lambda m, fqn: isinstance(m, nn.Linear) and fqn in wanted)
