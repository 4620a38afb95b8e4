"""Per-layer bits: a plan name -> k for the quantized layers, from rules or from measured sensitivities.

Rules (`quant.layer_bits`) are applied in order over quant.bits, later rules winning: `first` / `last` name every
quantized layer of the first / last transformer block (the block is the first integer in a layer's name), any other
key is a regex searched in the name; k = 16 keeps the layer unquantized ("first and last block at 8 bits").

An allocation (`quant.allocate`) measures, on calibration data, the loss increase of quantizing each layer alone at
each candidate k (round-to-nearest, everything else at 16 bits), then spends the budget greedily: every layer
starts at the smallest k, and the upgrade with the largest loss decrease per added bit is taken while the mean k
per quantized weight stays within quant.bits. Adding the layers' isolated loss increases is the approximation
that sensitivity-based mixed precision makes (HAWQ, Dong et al. 2019, with a Hessian trace instead of a measured
loss); the chosen plan is then quantized with the configured method (RTN or GPTQ), and its exact total bits are
counted layer by layer (`ksir.quant.bits`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

from ksir.errors import ConfigError
from ksir.quant.config import LAYER_POSITIONS, QuantConfig
from ksir.quant.vocab import REFERENCE_BITS

Plan = dict[str, float]  # quantized layer name -> k (16 = left unquantized)


def block_index(name: str) -> int | None:
    """The transformer block of a layer: the first integer component of its dotted name."""
    return next((int(p) for p in name.split(".") if p.isdigit()), None)


def rule_plan(names: list[str], q: QuantConfig) -> Plan:
    """quant.bits for every layer, then each rule over the layers it names; a rule naming none is an error."""
    plan = {n: float(q.bits) for n in names}
    blocks = [b for b in map(block_index, names) if b is not None]
    for rule, k in q.layer_bits.items():
        if rule in LAYER_POSITIONS:
            if not blocks:
                raise ConfigError(f"quant.layer_bits.{rule}", k, "a regex on layer names",
                                  "no quantized layer name holds a block number")
            target = min(blocks) if rule == "first" else max(blocks)
            hit = [n for n in names if block_index(n) == target]
        else:
            hit = [n for n in names if re.search(rule, n)]
        if not hit:
            raise ConfigError(f"quant.layer_bits.{rule}", k, "a rule matching at least one quantized layer",
                              f"matches none of {len(names)} (e.g. {names[0]})")
        plan.update(dict.fromkeys(hit, float(k)))
    return plan


def mean_bits(plan: Plan, shapes: Mapping[str, tuple[int, int]]) -> float:
    """The mean k per quantized weight (16-bit layers count at 16): what an allocation's budget bounds."""
    n = {name: shapes[name][0] * shapes[name][1] for name in plan}
    return sum(plan[name] * n[name] for name in plan) / sum(n.values())


def greedy_allocation(gain: Mapping[str, Mapping[float, float]], sizes: Mapping[str, int], budget: float) -> Plan:
    """Each layer from the smallest k upwards, upgrades taken by loss decrease per added bit while the mean k stays
    within `budget`. gain[name][k]: the measured loss increase of that layer alone at k."""
    cands = {name: sorted(ks) for name, ks in gain.items()}
    plan = {name: ks[0] for name, ks in cands.items()}
    room = budget * sum(sizes.values()) - sum(plan[n] * sizes[n] for n in plan)
    while True:
        best, best_rate = None, None
        for name, ks in cands.items():
            i = ks.index(plan[name])
            for nxt in ks[i + 1:]:  # the best next step of this layer (skipping a k that gains nothing)
                extra = (nxt - plan[name]) * sizes[name]
                if extra > room + 1e-9:
                    continue
                rate = (gain[name][plan[name]] - gain[name][nxt]) / extra
                if best_rate is None or rate > best_rate:
                    best, best_rate = (name, nxt), rate
        if best is None:
            return plan
        name, nxt = best
        room -= (nxt - plan[name]) * sizes[name]
        plan[name] = nxt


def sensitivities(model: nn.Module, layers: Mapping[str, nn.Module], q: QuantConfig,
                  calib: torch.Tensor) -> dict[str, dict[float, float]]:
    """Loss increase on `calib` of each layer quantized alone (round-to-nearest) at each candidate k."""
    from ksir.evaluate import evaluate_lm
    from ksir.quant.blockwise import make_grid, quantize_weight
    from ksir.quant.calib import eval_mode
    from ksir.quant.select import get_weight, set_weight

    def calibration_loss() -> float:
        return evaluate_lm(model, calib, q.gptq.batch_size)["val_loss"]

    grids = {k: make_grid(at_bits(q, k)) for k in q.allocate.candidates}
    out: dict[str, dict[float, float]] = {}
    with eval_mode(model), torch.no_grad():
        base = calibration_loss()
        for name, m in layers.items():
            w = get_weight(m).detach().clone()
            out[name] = {}
            for k, grid in grids.items():
                set_weight(m, quantize_weight(w, grid, q.granularity, q.blocksize))
                out[name][float(k)] = calibration_loss() - base
            set_weight(m, w)
    return out


def at_bits(q: QuantConfig, k: float) -> QuantConfig:
    """q as a uniform format at k bits (the grid and the bit accounting of one layer of a plan)."""
    import dataclasses

    from ksir.quant.config import AllocateConfig

    return dataclasses.replace(q, bits=k, layer_bits={}, allocate=AllocateConfig())


def layer_plan(model: nn.Module, layers: Mapping[str, nn.Module], q: QuantConfig,
               calib: torch.Tensor | None) -> tuple[Plan, dict[str, dict[float, float]] | None]:
    """The plan (and, for an allocation, the measured sensitivities it came from)."""
    from ksir.quant.select import get_weight

    names = list(layers)
    if not q.allocate.on:
        return rule_plan(names, q), None
    sens = sensitivities(model, layers, q, calib[: q.allocate.sequences])
    sizes = {n: get_weight(m).numel() for n, m in layers.items()}
    return greedy_allocation(sens, sizes, float(q.bits)), sens


def is_kept(k: float) -> bool:
    return float(k) == REFERENCE_BITS

