"""The registry of weight storage backends: simulated (fake-quantized 32-bit tensors) or a real packed format.

A backend is a library; each of its `PackedFormat`s names the ksir quant configuration it stores exactly
(bits, data type, granularity, block sizes, scale storage) and where its kernels run. `format_for(q)` picks
the one format that stores `q`, or raises a one-line ConfigError that says why not and what would work,
before any compute. This module is torch-free: checking a config never imports torch or the libraries;
the packing code lives in `ksir.deploy.<library>` and is loaded by name, like job runners.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ksir.errors import ConfigError

if TYPE_CHECKING:
    from ksir.quant.config import QuantConfig

SIMULATED = "simulated"
BNB_BLOCKS = (32, 64, 128, 256, 512, 1024, 2048, 4096)  # bitsandbytes 4-bit blockwise kernels (32 since 0.45)


@dataclass(frozen=True)
class PackedFormat:
    """One storage format of a library, and the ksir quant configuration it stores."""

    name: str
    bits: tuple[float, ...]
    dtype: str
    granularities: tuple[str, ...]
    blocksizes: tuple[int, ...] | None  # None: any block size that divides the rows
    scale_bits: tuple[int, ...]
    devices: tuple[str, ...]  # "cpu", "cuda": where the library's kernels run
    packed: bool  # False: stored one value per int8 (k < 8 saves no memory); measured and said so
    doc: str
    needs: tuple[tuple[str, Any], ...] = ()  # further quant keys the format fixes: (("exponent_bits", 2),)
    requires: Callable[[QuantConfig], str | None] | None = None  # any other condition: None if met, else why

    def mismatch(self, q: QuantConfig) -> str | None:
        """Why this format cannot store q (the first reason), or None."""
        if float(q.bits) not in self.bits or q.dtype != self.dtype:
            return "bits/dtype"
        if q.granularity not in self.granularities:
            return f"granularity {q.granularity} (it has {', '.join(self.granularities)})"
        if q.granularity == "block" and self.blocksizes is not None and q.blocksize not in self.blocksizes:
            return f"block {q.blocksize} (it has {', '.join(map(str, self.blocksizes))})"
        if q.scale_bits not in self.scale_bits:
            return f"scale_bits={q.scale_bits} (it has {', '.join(map(str, self.scale_bits))})"
        for key, value in self.needs:
            if getattr(q, key) != value:
                return f"needs quant.{key}={value}"
        return self.requires(q) if self.requires else None


@dataclass(frozen=True)
class Backend:
    name: str
    package: str  # import name; pip name in `pip`
    pip: str
    packer: str  # "module:function" (model, q, names, info) -> None, packing the named linear layers in place
    methods: tuple[str, ...]  # ksir methods whose weights the library reproduces itself
    formats: tuple[PackedFormat, ...]
    doc: str

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def pack(self, *args: Any, **kwargs: Any) -> Any:
        module, fn = self.packer.split(":")
        return getattr(importlib.import_module(module), fn)(*args, **kwargs)


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend("bitsandbytes", "bitsandbytes", "bitsandbytes", "ksir.deploy.with_bitsandbytes:pack", ("rtn",), (
        PackedFormat("int8", (8,), "int", ("channel",), None, (16,), ("cpu", "cuda"), True,
                     "LLM.int8(): int8 rows with an fp32 absmax each, 16-bit outlier columns of activations (threshold 6)"),
        PackedFormat("nf4", (4,), "nf", ("block",), BNB_BLOCKS, (16, 8), ("cpu", "cuda"), True,
                     "NF4, two codes per byte, fp32 absmax per block (scale_bits=8: double-quantized, QLoRA)"),
        PackedFormat("fp4", (4,), "float", ("block",), BNB_BLOCKS, (16, 8), ("cpu", "cuda"), True,
                     "FP4 (E2M1), two codes per byte, fp32 absmax per block (scale_bits=8: double-quantized)",
                     (("exponent_bits", 2), ("subnormals", True))),
    ), "QLoRA's NF4/FP4 and LLM.int8() (Dettmers et al.); CPU ops since 0.45"),
    Backend("torchao", "torchao", "torchao", "ksir.deploy.with_torchao:pack", ("rtn",), (
        PackedFormat("int8_weight_only", (8,), "int", ("channel",), None, (16,), ("cpu", "cuda"), True,
                     "Int8WeightOnlyConfig: symmetric int8 rows (-128..127, scale absmax/127.5), fp32 row scale"),
        PackedFormat("int4_weight_only", (4,), "int_asym", ("block",), (32, 64, 128, 256), (16,), ("cuda",), True,
                     "Int4WeightOnlyConfig (tinygemm tile packing): bf16 scale and zero per group",
                     (("zero_point", "float"),)),
        PackedFormat("intx_weight_only", (2, 3, 4, 5, 6, 7), "int_asym", ("block", "channel"), None, (16,),
                     ("cpu", "cuda"), False,
                     "IntxWeightOnlyConfig: k-bit values stored unpacked, one per int8", (("zero_point", "int"),)),
        PackedFormat("float8_weight_only", (8,), "float", ("channel",), None, (16,), ("cpu", "cuda"), True,
                     "Float8WeightOnlyConfig: float8_e4m3fn rows with a per-row scale (native matmul on sm89+)",
                     (("exponent_bits", 4),)),
    ), "PyTorch's quantization library (tensor subclasses, quantize_)"),
    Backend("hqq", "hqq", "hqq", "ksir.deploy.with_hqq:pack", ("rtn",), (
        PackedFormat("hqq", (1, 2, 3, 4, 8), "int_asym", ("block",), None, (16,), ("cpu", "cuda"), True,
                     "HQQ bit-packing (1/2/4/8 bits per byte lane, 3-bit as 10 per int32), 16-bit scale and zero "
                     "per group; calibration-free (its proximal optimiser off: method=rtn)",
                     requires=lambda q: None if q.blocksize % 8 == 0 else "HQQ groups are multiples of 8"),
    ), "Half-Quadratic Quantization (Badri & Shaji 2023): 1..8 bits, no calibration"),
)}


def names() -> list[str]:
    return [SIMULATED, *BACKENDS]


def format_for(q: QuantConfig) -> PackedFormat | None:
    """The packed format that stores q (None for the simulated backend or a 16-bit job), else one ConfigError."""
    if q.backend == SIMULATED or q.reference:
        if q.backend not in (SIMULATED, *BACKENDS):
            raise ConfigError("quant.backend", q.backend, names())
        return None
    if q.backend not in BACKENDS:
        raise ConfigError("quant.backend", q.backend, names())
    b = BACKENDS[q.backend]
    scheme = f"{q.dtype}{q.bits:g} " + (f"block {q.blocksize}" if q.granularity == "block" else q.granularity)
    if q.method not in b.methods:
        raise ConfigError("quant.backend", q.backend, why=f"no packed kernel for method={q.method} in {b.name} "
                          f"(it packs {', '.join(b.methods)}); use quant.backend=simulated")
    if q.outlier.mode != "none":
        raise ConfigError("quant.backend", q.backend, why=f"no packed kernel for outlier columns in {b.name}; "
                          "use quant.backend=simulated")
    reasons = []
    for f in b.formats:
        why = f.mismatch(q)
        if why is None:
            return f
        if why != "bits/dtype":
            reasons.append(f"{f.name}: {why}")
    have = "; ".join(f"{f.name} = {describe(f)}" for f in b.formats)
    detail = f" ({'; '.join(reasons)})" if reasons else ""
    raise ConfigError("quant.backend", q.backend, why=f"no packed kernel for {scheme} in {b.name}{detail}; "
                      f"it has {have}; use quant.backend=simulated")


def describe(f: PackedFormat) -> str:
    """`nf4 blocks 64..4096` style: the quant configuration a format stores."""
    bits = "/".join(f"{b:g}" for b in f.bits)
    gran = []
    for g in f.granularities:
        if g == "block":
            gran.append("block " + ("any" if f.blocksizes is None else f"{f.blocksizes[0]}..{f.blocksizes[-1]}"
                                    if len(f.blocksizes) > 2 else "/".join(map(str, f.blocksizes))))
        else:
            gran.append(g)
    return f"{f.dtype} {bits}-bit, {' or '.join(gran)}"


def check_installed(q: QuantConfig) -> None:
    """The library of a packed backend can be imported (checked without importing it)."""
    if q.backend != SIMULATED and not q.reference:
        b = BACKENDS[q.backend]
        if not b.installed():
            raise ConfigError("quant.backend", q.backend, why=f"the {b.pip} package is not installed "
                              "(pip install 'ksir[deploy]')")


def coverage_table() -> str:
    """docs/deploy.md's table: which backend stores which (k, data type, granularity), on which devices."""
    rows = ["| backend | format | k | quant.dtype | granularity / block | scales | also | devices | packed |",
            "|---|---|---|---|---|---|---|---|---|"]
    for b in BACKENDS.values():
        for f in b.formats:
            gran = ", ".join(("block " + ("any" if f.blocksizes is None else "/".join(map(str, f.blocksizes))))
                             if g == "block" else g for g in f.granularities)
            rows.append(f"| {b.name} | {f.name} | {'/'.join(f'{x:g}' for x in f.bits)} | {f.dtype} | {gran} | "
                        f"scale_bits {'/'.join(map(str, f.scale_bits))} | "
                        f"{', '.join(f'{k}={v}' for k, v in f.needs) or '-'} | {'/'.join(f.devices)} | "
                        f"{'yes' if f.packed else 'no (int8 per value)'} |")
    return "\n".join(rows)
