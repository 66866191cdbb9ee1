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
"""

from __future__ import annotations

from bnnctl.posterior import LogPosterior
from bnnctl.samplers import hmc, laplace, mc_dropout, sgmcmc, swag, vi
from bnnctl.samplers.base import (
    APPROXIMATIONS,
    METHODS,
    NEED_START,
    ChainState,
    Sampler,
    SamplerConfig,
    load_state,
    save_state,
)

_MODULES = {"sgld": sgmcmc, "sghmc": sgmcmc, "hmc": hmc, "mfvi": vi, "laplace": laplace,
            "swag": swag, "mc_dropout": mc_dropout}


def build(config: SamplerConfig, post: LogPosterior) -> Sampler:
    """The sampler ``config.method`` for the posterior ``post``."""
    return _MODULES[config.method].build(config, post)


__all__ = ["APPROXIMATIONS", "METHODS", "NEED_START", "ChainState", "Sampler", "SamplerConfig",
           "build", "load_state", "save_state"]
