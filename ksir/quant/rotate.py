"""Randomised Hadamard rotations of each quantized layer's input dimension (QuaRot, QuEST): W -> W R, x -> x R.

R = diag(s) blockdiag(H_b / sqrt(b)) is orthogonal (s random signs, H_b Sylvester's Hadamard matrix), so
(x R)(W R)^T = x W^T: in 16 bits the rotated model computes the same function (a test checks it to float
tolerance). Rotated, a weight's or an activation's outliers are spread over b coordinates, which is what makes
4-bit activations usable. Here the rotation is per layer and online (the input is rotated by a forward pre-hook
before it is quantized), not QuaRot's rotation of the residual stream fused into the neighbouring layers: the
same effect on each layer's quantization, without rewriting the architecture. b is the largest power of two that
divides the layer's in_features (the whole row for 64, 128, 256; blocks of 64 for 192 or 704): a Hadamard matrix
exists for every power of two, and blocks of b line up with the weights' quantization blocks.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ksir.quant.select import get_weight, set_weight

SEED = 0  # the signs are a function of (SEED, in_features): the same rotation for every run of a config


def block_size(n: int) -> int:
    """The largest power of two that divides n."""
    return n & -n


def hadamard(b: int) -> torch.Tensor:
    """Sylvester's Hadamard matrix of order b (a power of two), scaled to be orthonormal."""
    h = torch.ones(1, 1)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(b)


class Rotation:
    """x -> x R on the last dimension, R = diag(signs) blockdiag(H_b)."""

    def __init__(self, n: int, seed: int = SEED):
        self.n, self.b = n, block_size(n)
        g = torch.Generator().manual_seed(seed * 1_000_003 + n)
        self.signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1
        self.h = hadamard(self.b)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        s, h = self.signs.to(x.device, x.dtype), self.h.to(x.device, x.dtype)
        shape = x.shape
        return ((x * s).reshape(*shape[:-1], self.n // self.b, self.b) @ h).reshape(shape)

    def matrix(self) -> torch.Tensor:
        return self.apply(torch.eye(self.n))


def rotate_layers(modules: dict[str, nn.Module]) -> list[torch.utils.hooks.RemovableHandle]:
    """Rotate each layer's weight (W R) and rotate its input before everything else sees it (x R, a forward
    pre-hook registered first). Returns the hooks' handles (removing them and multiplying the weight by R^T
    undoes it)."""
    handles = []
    for m in modules.values():
        w = get_weight(m)
        rot = Rotation(w.shape[1])
        with torch.no_grad():
            set_weight(m, rot.apply(w.detach().float()).to(w.dtype))
        handles.append(m.register_forward_pre_hook(_input_hook(rot), prepend=True))
    return handles


def _input_hook(rot: Rotation):
    def hook(_module: nn.Module, args: tuple) -> tuple:
        return (rot.apply(args[0]), *args[1:])

    return hook
