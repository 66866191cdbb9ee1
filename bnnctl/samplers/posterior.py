"""The log posterior of M stacked models and its gradient, for the samplers.

For parameters θ ∈ R^P of one model, N training points and an isotropic Gaussian prior
N(0, σ_p² I) (``prior_var`` = σ_p²), the (tempered) potential energy a sampler targets is

    U_T(θ) = ( Σ_{n=1..N} -log p(y_n | x_n, θ)  +  |θ|² / (2 σ_p²) ) / T,

so that the target density is p(θ | D)^{1/T} ∝ exp(-U_T(θ)). ``T = 1`` is the Bayes
posterior, ``T < 1`` a "cold" posterior. On a minibatch B of the data the summed NLL is
estimated without bias by (N / |B|) Σ_{n∈B} -log p(y_n | x_n, θ).

Prior ↔ weight decay (the convention of every flag in bnnctl): the NLL is *summed* over
the N points, so a prior variance σ_p² is an L2 penalty |θ|²/(2σ_p²) on the summed loss,
i.e. weight decay 1/σ_p² in bnn_hmc's convention. ``torch.optim``'s ``weight_decay`` λ
acts on the *mean* loss, so it corresponds to prior precision N·λ: σ_p² = 1/(N·λ)
(:func:`prior_var_from_weight_decay`). A trained network's weight decay therefore names
the prior whose MAP it approximates.

Log prior constants (and the likelihood's) are kept or dropped consistently: energies
are only ever compared with energies of the same posterior.

Conv nets (:class:`~bnnctl.arch.ConvSpec`) have the same energy; their gradient is taken
by autograd through ``arch.forward`` over the stacked chains (:func:`conv_outputs`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bnnctl.arch import AnyArch, ArchSpec, ConvSpec
from bnnctl.data import Dataset
from bnnctl.errors import UsageError
from bnnctl.evaluate.likelihood import Categorical, Gaussian, for_task
from bnnctl.threads import in_blocks

#: Points per forward pass in full-batch evaluations (bounds activation memory).
CHUNK = 2048
#: Chains x points evaluated together (keeps the activations of a group in cache).
CHAIN_POINTS = 4096


def prior_var_from_weight_decay(weight_decay: float, n: int) -> float:
    """The prior variance whose MAP is training with ``torch.optim`` weight decay λ on the
    mean loss over ``n`` points: σ_p² = 1 / (n λ)."""
    if weight_decay <= 0 or n <= 0:
        raise UsageError("weight decay and the number of points must be positive")
    return 1.0 / (n * weight_decay)


@dataclass(frozen=True, eq=False)
class LogPosterior:
    """-log p(θ | D)^{1/T} up to a constant, for ``M`` stacked models ``[M, P]``.

    ``x``/``y`` are the training data (converted to the params' dtype on use).
    """

    arch: AnyArch
    likelihood: Categorical | Gaussian
    x: torch.Tensor
    y: torch.Tensor
    prior_var: float = 1.0
    temperature: float = 1.0

    @classmethod
    def of(
        cls,
        arch: AnyArch,
        ds: Dataset,
        prior_var: float = 1.0,
        temperature: float = 1.0,
        noise_std: float = 1.0,
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> LogPosterior:
        """The posterior of ``arch`` on the training split of ``ds``, its data on
        ``device`` (default the CPU)."""
        # Copies into torch's 64-byte-aligned memory: MKL's rounding can depend on the
        # inputs' alignment, which a numpy array (e.g. one unpickled on a Dask worker)
        # does not fix, and chains must not depend on where they run.
        x = torch.tensor(ds.x_train, dtype=dtype, device=device)
        y = torch.tensor(ds.y_train, device=device)
        y = y.to(dtype) if y.is_floating_point() else y
        return cls(arch, for_task(ds.task, noise_std), x, y, prior_var, temperature)

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def log_prior(self, params: torch.Tensor) -> torch.Tensor:
        """log N(θ | 0, σ_p² I) without its constant, ``[M]`` (float64)."""
        return -0.5 * torch.linalg.vecdot(params, params).double() / self.prior_var

    def nll(
        self, params: torch.Tensor, idx: torch.Tensor | None = None, masks=None
    ) -> torch.Tensor:
        """Summed NLL over all N points (``idx`` None) or its (N/B)-scaled minibatch
        estimate over per-chain indices ``idx [M, B]``; ``[M]`` float64."""
        with torch.no_grad():
            return sum(
                self.likelihood.nll_and_grad(self._outputs(params, x, masks), y)[0].double() * s
                for x, y, s in self._batches(params, idx)
            )

    def _outputs(self, params: torch.Tensor, x: torch.Tensor, masks=None) -> torch.Tensor:
        """Outputs ``[M, B, out]`` on flat inputs ``x`` (``[B, F]`` or ``[M, B, F]``)."""
        if isinstance(self.arch, ArchSpec):
            return self.arch.forward(params, x, None, masks)
        check_no_masks(self.arch, masks)
        return conv_outputs(self.arch, params, x)

    def log_likelihood(self, params: torch.Tensor, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Σ_n log p(y_n | x_n, θ) (or its minibatch estimate), ``[M]`` float64."""
        return -self.nll(params, idx)

    def log_posterior(self, params: torch.Tensor) -> torch.Tensor:
        """(log likelihood + log prior) / T = −U_T, without constants, ``[M]`` float64."""
        return (self.log_likelihood(params) + self.log_prior(params)) / self.temperature

    def energy_and_grad(
        self,
        params: torch.Tensor,
        idx: torch.Tensor | None = None,
        masks: list[torch.Tensor] | None = None,
        prior: bool = True,
        out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(U_T [M] float64, ∇U_T [M, P])``: full batch when ``idx`` is None, else the
        unbiased minibatch estimate on ``idx [M, B]``. ``prior=False`` leaves out the
        prior term and the temperature (the bare summed NLL, for VI and curvature).
        ``out``, if given (``[M, P]``, contiguous), receives the gradient and is returned.

        Chains are processed in groups whose activations stay cache-sized (measured on
        2 cores: 16 chains x 128 points beats 64 x 128; a few chains x 1437 points beats
        64 x 1437 by ~1.7x); conv nets' groups in blocks, one thread each
        (:func:`conv_outputs`)."""
        m = params.shape[0]
        energy = torch.zeros(m, dtype=torch.float64, device=params.device)
        grad = torch.empty_like(params) if out is None else out
        points = self.n if idx is None else idx.shape[1]
        group = max(1, min(m, CHAIN_POINTS // max(points, 1)))
        with torch.no_grad():
            if isinstance(self.arch, ConvSpec):
                check_no_masks(self.arch, masks)
                arch = self.arch

                def work(lo: int, hi: int) -> None:
                    for sl in chain_groups(lo, hi, group):
                        sub = None if idx is None else idx[sl]
                        energy[sl] = self._conv_nll_and_grad(arch, params[sl], sub, grad[sl])

                in_blocks(m, work, params.device)
            else:
                for i in range(0, m, group):
                    sl = slice(i, i + group)
                    energy[sl] = self._nll_and_grad(
                        params[sl],
                        None if idx is None else idx[sl],
                        None if masks is None else [mk[sl] for mk in masks],
                        grad[sl],
                    )
            if prior:
                energy -= self.log_prior(params)
                grad.add_(params, alpha=1.0 / self.prior_var).div_(self.temperature)
                energy /= self.temperature
        return energy, grad

    def _nll_and_grad(self, params, idx, masks, grad) -> torch.Tensor:
        """Summed (or minibatch-estimated) NLL ``[m]`` of a group of MLP chains; its
        gradient is written into ``grad``."""
        assert isinstance(self.arch, ArchSpec)
        energy = torch.zeros(params.shape[0], dtype=torch.float64, device=params.device)
        first, part = True, None
        for x, y, scale in self._batches(params, idx):
            keep: list = []
            out = self.arch.forward(params, x, keep, masks)
            nll, dout = self.likelihood.nll_and_grad(out, y)
            if first:  # first (usually only) piece: straight into grad
                self.arch.backward(params, keep, dout.mul_(scale), grad, masks)
                first = False
            else:
                part = torch.empty_like(params) if part is None else part
                grad += self.arch.backward(params, keep, dout.mul_(scale), part, masks)
            energy += nll.double() * scale
        return energy

    def _conv_nll_and_grad(self, arch: ConvSpec, params, idx, grad) -> torch.Tensor:
        """:meth:`_nll_and_grad` of a group of conv-net chains (on one thread, see
        :func:`conv_outputs`): the likelihood's d NLL / d outputs back-propagated through
        the stacked ``arch.forward`` by autograd. A lone chain runs as two copies."""
        m = params.shape[0]
        energy = torch.zeros(m, dtype=torch.float64, device=params.device)
        leaf = (params.repeat(2, 1) if m == 1 else params).detach().requires_grad_(True)
        first = True
        with torch.enable_grad():
            for x, y, scale in self._batches(params, idx):
                if idx is not None and m == 1:  # per-chain minibatch: the copy's too
                    x, y = x.expand(2, -1, -1), y.expand(2, *[-1] * (y.dim() - 1))
                out = arch.forward(leaf, per_model(x, leaf.shape[0]))
                nll, dout = self.likelihood.nll_and_grad(out.detach(), y)
                (g,) = torch.autograd.grad(out, leaf, dout.mul_(scale))
                if first:
                    grad.copy_(g[:m])
                    first = False
                else:
                    grad += g[:m]
                energy += nll[:m].double() * scale
        return energy

    def _batches(self, params: torch.Tensor, idx: torch.Tensor | None):
        """(x, y, scale) pieces whose scaled NLLs sum to the (estimated) total."""
        dtype = params.dtype
        if idx is not None:
            y = self.y[idx]
            yield (
                self.x[idx].to(dtype),
                (y.to(dtype) if y.is_floating_point() else y),
                self.n / idx.shape[1],
            )
            return
        for i in range(0, self.n, CHUNK):
            y = self.y[i : i + CHUNK]
            yield (
                self.x[i : i + CHUNK].to(dtype),
                (y.to(dtype) if y.is_floating_point() else y),
                1.0,
            )


def conv_outputs(arch: ConvSpec, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Outputs ``[M, B, out]`` of ``M`` stacked conv nets on flat channel-major inputs:
    ``x [B, F]`` shared by all models, or ``[M, B, F]`` (chain m's own minibatch); no
    autograd.

    The chains run stacked (``arch.forward`` on per-model inputs, a shared one repeated),
    in blocks of at least two, each block on one thread (:func:`in_blocks`): so chain k's
    results depend neither on the chains beside it, nor on how chains are split into
    blocks, nor on the thread count. Measured (torch 2.13, CPU): the stacked forward and
    backward on per-model inputs give each model the same bits for any M >= 2 and any row
    on one thread; on two threads convs with several input channels per group split their
    sums by thread, and M = 1 takes another kernel (a lone chain runs as two copies). The
    stacked forward on a shared input (one matmul for all models) rounds with M, so a
    shared input is repeated per model."""
    m = params.shape[0]
    out = torch.empty((m, x.shape[-2], arch.n_outputs), dtype=params.dtype, device=params.device)
    group = max(2, CHAIN_POINTS // max(x.shape[-2], 1))

    def work(lo: int, hi: int) -> None:
        for sl in chain_groups(lo, hi, group):
            p, xs = params[sl], x[sl] if x.dim() == 3 else x
            if p.shape[0] == 1:  # a lone chain runs as two copies
                p, xs = p.repeat(2, 1), xs.expand(2, -1, -1) if xs.dim() == 3 else xs
            with torch.no_grad():
                out[sl] = arch.forward(p, per_model(xs, p.shape[0]))[: sl.stop - sl.start]

    in_blocks(m, work, params.device)
    return out


def per_model(x: torch.Tensor, m: int) -> torch.Tensor:
    """Inputs ``[M, B, F]``: ``x`` itself, or a shared ``[B, F]`` repeated per model."""
    return x if x.dim() == 3 else x.unsqueeze(0).expand(m, *x.shape)


def chain_groups(lo: int, hi: int, size: int) -> list[slice]:
    """Chains lo..hi-1 in consecutive groups of about ``size`` (at least two each, unless
    there is only one chain): a group of one would run as two copies."""
    size = max(2, size)
    cuts = list(range(lo, hi, size)) + [hi]
    if len(cuts) > 2 and cuts[-1] - cuts[-2] == 1:
        del cuts[-2]  # a last chain alone joins the group before it
    return [slice(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def check_no_masks(arch: AnyArch, masks) -> None:
    if masks is not None:
        raise UsageError(f"dropout masks are not supported for conv nets ({arch.name})")


# Each chain's generator is a CPU generator whatever the device (bnnctl.device): a draw is
# made on the CPU and moved, so a chain draws the same numbers on any device.


def minibatch(
    gens: list[torch.Generator], n: int, size: int, device: torch.device | None = None
) -> torch.Tensor:
    """Per-chain minibatch indices ``[M, size]``, drawn uniformly with replacement from
    each chain's own generator (so no epoch order needs to be checkpointed)."""
    size = min(size, n)
    return torch.stack([torch.randint(n, (size,), generator=g) for g in gens]).to(device)


def randn(
    gens: list[torch.Generator], p: int, dtype: torch.dtype, device: torch.device | None = None
) -> torch.Tensor:
    """Standard normal noise ``[M, p]``, row m from chain m's generator."""
    out = torch.empty((len(gens), p), dtype=dtype)
    for row, g in zip(out, gens, strict=True):
        row.normal_(generator=g)
    return out.to(device)


def rand(
    gens: list[torch.Generator],
    dtype: torch.dtype = torch.float64,
    device: torch.device | None = None,
) -> torch.Tensor:
    """One uniform(0, 1) number per chain ``[M]``."""
    return torch.stack([torch.rand((), generator=g, dtype=dtype) for g in gens]).to(device)
