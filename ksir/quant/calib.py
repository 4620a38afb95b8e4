"""Run calibration sequences through a model while hooks watch the inputs of chosen linear layers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import torch
from torch import nn


class StopForward(Exception):
    """Raised by a hook once every watched layer has seen the batch: the rest of the model need not run."""


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


@torch.no_grad()
def watch_inputs(
    model: nn.Module,
    modules: dict[str, nn.Module],
    calib: torch.Tensor,
    batch_size: int,
    on_input: Callable[[str, torch.Tensor], None],
) -> None:
    """Call on_input(name, x[tokens, in_features]) for each watched module and calibration batch; each forward
    stops right after the last watched module has run."""
    device = next(model.parameters()).device
    seen: set[str] = set()

    def hook(name: str):
        def fn(_m: nn.Module, args: tuple) -> None:
            x = args[0]
            on_input(name, x.reshape(-1, x.shape[-1]))
            seen.add(name)
            if len(seen) == len(modules):
                raise StopForward

        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
    try:
        with eval_mode(model):
            for i in range(0, calib.shape[0], batch_size):
                seen.clear()
                with suppress(StopForward):
                    model(calib[i : i + batch_size].to(device))
    finally:
        for h in handles:
            h.remove()
