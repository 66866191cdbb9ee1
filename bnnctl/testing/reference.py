"""Plain ``torch.nn`` twins of an :class:`~bnnctl.arch.ArchSpec`, written without the
spec's own layout or forward code: the independent truth for tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bnnctl.arch import ArchSpec, ConvSpec

ACTIVATION_MODULES: dict[str, Callable[[], torch.nn.Module]] = {
    "relu": torch.nn.ReLU,
    "leaky_relu": lambda: torch.nn.LeakyReLU(0.01),
    "tanh": torch.nn.Tanh,
    "gelu": torch.nn.GELU,
}


def build_module(arch: ArchSpec, dtype: torch.dtype = torch.float32) -> torch.nn.Sequential:
    """The plain PyTorch network the spec describes (Linear, activation, Dropout)."""
    layers: list[torch.nn.Module] = []
    n = len(arch.widths) - 1
    for i, (a, b) in enumerate(zip(arch.widths[:-1], arch.widths[1:], strict=True)):
        layers.append(torch.nn.Linear(a, b, dtype=dtype))
        if i < n - 1:
            layers.append(ACTIVATION_MODULES[arch.activation]())
            if arch.dropout:
                layers.append(torch.nn.Dropout(arch.dropout))
    return torch.nn.Sequential(*layers)


def module_of(arch: ArchSpec, row: torch.Tensor) -> torch.nn.Sequential:
    """The network with the weights of one ``[P]`` row, in eval mode."""
    net = build_module(arch, row.dtype).eval()
    net.load_state_dict(arch.state_dict(row))
    return net


def outputs(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``[M, N, out]``: each row of ``flat [M, P]`` run as its own module on ``x``."""
    with torch.no_grad():
        return torch.stack([module_of(arch, r)(x) for r in flat])


def feed_dropout_masks(
    net: torch.nn.Module, draw: Callable[[torch.Tensor, float], torch.Tensor]
) -> list[Any]:
    """Make each ``nn.Dropout`` of ``net`` with p > 0 (in module order) return its input
    times ``draw(input, p)`` instead of torch's own mask (a forward hook replacing its
    output; the module stays in train mode). Returns the hook handles."""
    handles = []
    for mod in net.modules():
        if isinstance(mod, torch.nn.Dropout) and mod.p > 0:

            def hook(m: torch.nn.Module, inp: tuple, out: torch.Tensor) -> torch.Tensor:
                return inp[0] * draw(inp[0], m.p)  # type: ignore[arg-type]

            handles.append(mod.register_forward_hook(hook))
    return handles


def train_reference(pop: Any, seed: int) -> torch.Tensor:
    """One model of population ``pop`` (an ``engines.train.Population``) trained the
    ordinary way: its plain module (:func:`build_module`, or a conv net's
    ``ConvSpec.module()``) in train mode, ``torch.optim`` (with ``MultiStepLR`` for
    milestones) and ``F.cross_entropy``, one model at a time. It shares only the model's
    random stream with bnnctl's trainer (the init, then per epoch one permutation, then
    per step each dropout layer's element-wise mask of its input's shape, in module
    order: Bernoulli(1 - p) / (1 - p), as ``nn.Dropout`` draws it, but from that
    stream). Returns ``[P]``."""
    arch, cfg, ds = pop.arch, pop.config, pop.dataset
    conv = isinstance(arch, ConvSpec)
    g = pop.generator(seed)
    net = arch.module() if conv else build_module(arch)
    net.load_state_dict(arch.state_dict(arch.init(g)))
    net.train()
    feed_dropout_masks(
        net,
        lambda h, p: torch.bernoulli(torch.full(h.shape, 1.0 - p), generator=g).div_(1.0 - p),
    )
    opt: torch.optim.Optimizer
    if cfg.optimizer == "adam":
        opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(
            net.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    sched = None
    if cfg.lr_milestones:
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, list(cfg.lr_milestones), cfg.lr_gamma or 0.1
        )
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    if conv:
        x = x.view(-1, *arch.input)
    for epoch in range(cfg.epochs):
        if sched is None:
            for group in opt.param_groups:
                group["lr"] = cfg.lr_at(epoch)
        order = torch.randperm(len(x), generator=g)
        for s in range(0, len(x), cfg.batch_size):
            idx = order[s : s + cfg.batch_size]
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
    sd = net.state_dict()
    return torch.cat([sd[t.name].reshape(-1) for t in arch.layout])
