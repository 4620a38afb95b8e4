"""Total model bits: the x-axis of the k-bit scaling laws (Dettmers & Zettlemoyer 2023, Fig. 1).

Per quantized layer: k bits per quantized weight, the block constants (scale at scale_bits per block, or the 8-bit
double-quantized scale plus 32-bit group constants; for int_asym a 16-bit offset or a k-bit zero-point), the codebook of
data-driven types at 16 bits per entry, and the outlier columns at 16 bits plus a 16-bit column index each.
Everything else (embeddings, head, norms, biases, unselected layers) counts 16 bits per parameter.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from torch import nn

from ksir.quant.blockwise import DQ_BLOCKSIZE, DQ_CONST_BITS, n_blocks
from ksir.quant.config import QuantConfig
from ksir.quant.dtypes import DTYPES, TERNARY_BITS
from ksir.quant.lowrank import factor_bits, factor_granularity, rank_of
from ksir.quant.vocab import REFERENCE_BITS

OUTLIER_INDEX_BITS = 16  # one column index per kept input column


@dataclass
class QuantSummary:
    total_bits: float
    n_params: int  # all parameters, tied weights once
    n_quantized: int  # weights stored at k bits
    bits_per_param: float
    n_layers: int  # linear layers quantized
    plan: dict[str, float] | None = None  # per-layer bits: quantized layer name -> k (16 = left unquantized)
    sensitivity: dict[str, dict[float, float]] | None = None  # an allocation's measured loss increases
    mean_bits: float | None = None  # per-layer bits: the mean k per weight of the selected layers
    smooth: dict[str, dict[str, float]] | None = None  # SmoothQuant / AWQ: what each layer's scales came from

    def as_dict(self) -> dict:
        """The accounting (a per-layer plan, its mean k and its sensitivities are recorded on their own)."""
        d = asdict(self)
        for key in ("plan", "sensitivity", "mean_bits", "smooth"):
            del d[key]
        return d


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


def layer_bits(shape: tuple[int, int], q: QuantConfig, n_keep_cols: int = 0) -> tuple[float, int]:
    """(bits, weights stored at k bits) of one [out, in] weight quantized with q, n_keep_cols kept in 16 bit;
    with q.lowrank: the factor pair instead (factorize), or the k-bit weight plus its correction (correct)."""
    lr = q.lowrank
    if lr.mode == "factorize":
        r = rank_of(lr.rank, shape)
        if q.reference:  # factors kept at the reference precision
            return factor_bits(shape, r, REFERENCE_BITS), 0
        (a, na), (b, nb) = (_dense_bits(s, replace(q, granularity=factor_granularity(q, s)), 0)
                            for s in ((shape[0], r), (r, shape[1])))
        return a + b, na + nb
    bits, n_q = _dense_bits(shape, q, n_keep_cols)
    if lr.mode == "correct":
        bits += factor_bits(shape, rank_of(lr.rank, shape), lr.bits)
    return bits, n_q


def _dense_bits(shape: tuple[int, int], q: QuantConfig, n_keep_cols: int) -> tuple[float, int]:
    out, inp = shape
    # Ternary (bits = 1.58 in configs) stores log2(3) bits of information per weight.
    k = math.log2(3) if float(q.bits) == TERNARY_BITS else float(q.bits)
    n_q = out * (inp - n_keep_cols)
    nb = n_blocks(shape, q.granularity, q.blocksize)
    if q.scale_bits == REFERENCE_BITS:
        const = nb * REFERENCE_BITS
    else:
        const = nb * q.scale_bits + math.ceil(nb / DQ_BLOCKSIZE) * DQ_CONST_BITS + DQ_CONST_BITS
    if DTYPES[q.dtype].affine:
        const += nb * (k if q.zero_point == "int" else REFERENCE_BITS)  # zero-point or 16-bit offset
    if DTYPES[q.dtype].build_from_data is not None:
        const += 2 ** int(k) * REFERENCE_BITS  # the tensor's own codebook
    keep = out * n_keep_cols * REFERENCE_BITS + n_keep_cols * OUTLIER_INDEX_BITS
    return n_q * k + const + keep, n_q


def summarize(
    model: nn.Module, q: QuantConfig, shapes: dict[str, tuple[int, int]], keep: dict[str, int],
    plan: dict[str, float] | None = None,
) -> QuantSummary:
    """Summary for `shapes` (quantized layer name -> [out, in]) with `keep[name]` outlier columns each; with a
    per-layer plan, each layer at its own k and the 16-bit ones as unquantized parameters."""
    n_params = count_params(model)
    if q.unquantized or not shapes:
        return QuantSummary(REFERENCE_BITS * n_params, n_params, 0, float(REFERENCE_BITS), 0)
    mean = None
    if plan is not None:
        from ksir.quant.layers import at_bits, is_kept, mean_bits

        mean = mean_bits(plan, shapes)
        formats = {k: at_bits(q, k) for k in set(plan.values()) if not is_kept(k)}
        shapes = {n: s for n, s in shapes.items() if not is_kept(plan[n])}
    total, n_quant, n_weights = 0.0, 0, 0
    for name, shape in shapes.items():
        b, nq = layer_bits(shape, q if plan is None else formats[plan[name]], keep.get(name, 0))
        total += b
        n_quant += nq
        n_weights += shape[0] * shape[1]
    total += (n_params - n_weights) * REFERENCE_BITS
    return QuantSummary(total, n_params, n_quant, total / n_params, len(shapes), plan, mean_bits=mean)


def kv_shape(hf_config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a transformers config (GPT-2's n_layer / n_head included)."""
    c = hf_config.get_text_config(decoder=True) if hasattr(hf_config, "get_text_config") else hf_config
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "n_layer", None)
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "n_head", None)
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    hidden = getattr(c, "hidden_size", None) or getattr(c, "n_embd", None)
    head_dim = getattr(c, "head_dim", None) or hidden // heads
    return int(layers), int(kv_heads), int(head_dim)


def kv_bits_per_token(shape: tuple[int, int, int], kv: Any) -> float:
    """Bits one token of one sequence occupies in the KV cache (keys and values of every layer): k bits per value
    plus a 16-bit scale per group (head: head_dim values; token: every head of the layer), and a 16-bit offset per
    group for int_asym; 16 bits per value when the cache is not quantized (docs/precisions.md)."""
    layers, kv_heads, head_dim = shape
    values = 2 * layers * kv_heads * head_dim
    if not kv.on:
        return float(values * REFERENCE_BITS)
    group = head_dim if kv.granularity == "head" else kv_heads * head_dim
    per_group = REFERENCE_BITS * (2 if kv.dtype == "int_asym" else 1)
    return values * float(kv.bits) + values / group * per_group
