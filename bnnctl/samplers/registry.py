"""Every sampler module, by the methods it implements (from each module's ``DEFAULTS``)."""

from __future__ import annotations

from types import ModuleType

from bnnctl.samplers import hmc, laplace, laplace_ll, mc_dropout, sgmcmc, swag, vi

REGISTRY: dict[str, ModuleType] = {
    method: module
    for module in (sgmcmc, hmc, vi, laplace, laplace_ll, swag, mc_dropout)
    for method in module.DEFAULTS
}
