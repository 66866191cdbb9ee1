"""Posterior samplers over M stacked chains, one module per method, all with the face
``build(config, posterior) -> Sampler(init, update[, draw])`` (see :mod:`.base`)::

    from bnnctl.samplers import SamplerConfig, build
    sampler = build(SamplerConfig("hmc", step_size=1e-3, burn_in=50), posterior)
    state = sampler.init(params, gens)      # params [M, P], one torch.Generator per chain
    for _ in range(100):
        state = sampler.update(state)       # state.params: the chains' positions

Written here rather than taken from ``posteriors`` (normal-computing): its transforms draw
noise from torch's global generator (no per-chain stream to save and resume), take
gradients with ``torch.func`` autograd over a parameter tree per call instead of the
hand-written batched backward over ``[M, P]`` that bnnctl's engines share, and it has no
Metropolis-corrected HMC with per-chain adaptation.

:mod:`.config` (the configuration and the method names) is torch-free; the registry of
method modules (:data:`.registry.REGISTRY`) is loaded on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bnnctl.errors import UsageError
from bnnctl.samplers.config import APPROXIMATIONS, METHODS, NEED_START, SamplerConfig

if TYPE_CHECKING:
    from bnnctl.samplers.base import Sampler
    from bnnctl.samplers.posterior import LogPosterior


#: Methods that need an MLP's internals, and why (they refuse conv nets).
MLP_ONLY = {
    "laplace": "its diagonal GGN is built on the MLP's hand-written backward",
}


def check_supported(method: str, arch: Any) -> None:
    """Refuse (UsageError) a method that does not support ``arch``'s kind yet."""
    if getattr(arch, "kind", "mlp") == "mlp":
        return
    if method in MLP_ONLY:
        raise UsageError(
            f"{method} does not support conv nets yet ({MLP_ONLY[method]}); "
            "use hmc, sgld, sghmc, mfvi, swag or laplace_ll"
        )
    if method == "laplace_ll":
        from bnnctl.samplers.laplace_ll import last_layer

        last_layer(arch)


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """The sampler ``config.method`` for the posterior ``post``."""
    from bnnctl.samplers.registry import REGISTRY

    check_supported(config.method, post.arch)
    return REGISTRY[config.method].build(config, post)


__all__ = [
    "APPROXIMATIONS",
    "METHODS",
    "MLP_ONLY",
    "NEED_START",
    "SamplerConfig",
    "build",
    "check_supported",
]
