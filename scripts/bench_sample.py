"""Sampler throughput: gradient evaluations per second for many chains run together
versus the same chains run one at a time, measured in one run on the default MLP
(digits, mlp:64-128-128-10, relu).

  (a) one at a time, the ordinary way: per chain an nn.Module, autograd for ∇U and the
      same update written with torch ops (what a posteriors-style loop does);
  (a') one at a time with bnnctl's own sampler code (M = 1: a lean, strong baseline);
  (b) together: one bnnctl sampler over 64 stacked chains (M = 64, batched matmuls);
  (c) this machine's sgemm rate (torch.mm on large square matrices).

A gradient evaluation is one chain's ∇U on one minibatch (SGHMC, batch 128) or on the
full training set (HMC: one leapfrog step). Prints grad evals/s for (a), (a') and (b),
the speedups b/a and b/a', and (b)'s fraction of the sgemm roofline (matmul FLOPs per
evaluation). The run is split into ``--rounds`` rounds, each timing a share of (a), (a'),
(b) and (c) in turn, so that a change in the shared machine's load hits all of them; each
ratio is the median of its per-round values, each rate the total evals over the total time.

    python scripts/bench_sample.py                 # SGHMC, ~1 min
    python scripts/bench_sample.py --method sgld
    python scripts/bench_sample.py --method hmc
    python scripts/bench_sample.py --quick
    python scripts/bench_sample.py --parts         # also: where an SG update's time goes
    python scripts/bench_sample.py --arch optunet  # conv nets (digits28; no roofline figure)

``--parts`` (SGLD/SGHMC) times the pieces of one update of all the chains on one thread
(an update runs them per block of chains, one block per thread): each chain's minibatch
indices, the gradients, each chain's noise draw, SGHMC's step (in-place passes over the
chains' rows) and the rest (energies, the divergence check).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from roofline import sgemm_gflops  # scripts/roofline.py

from bnnctl import ArchSpec, load_dataset
from bnnctl.arch import AnyArch, ConvSpec, modules, parse_arch
from bnnctl.samplers import SamplerConfig, build, sgmcmc
from bnnctl.samplers.posterior import LogPosterior


def flops_per_eval(arch: ArchSpec, points: int) -> float:
    """Matmul FLOPs of one gradient: forward, weight gradients, input gradients but the first."""
    macs = [a * b for a, b in zip(arch.widths[:-1], arch.widths[1:], strict=False)]
    return 2.0 * points * (2 * sum(macs) + sum(macs[1:]))


def start(sampler, p: int, chains: range):
    """The stacked chains ``chains`` (seeded by index), initialised and warmed up."""
    gens = [torch.Generator().manual_seed(k) for k in chains]
    state = sampler.init(torch.stack([torch.randn(p, generator=g) * 0.1 for g in gens]), gens)
    return sampler.update(state)  # warm-up


def run(sampler, state, updates: int):
    """``updates`` updates of ``state``; returns the state and the seconds taken."""
    t0 = time.perf_counter()
    for _ in range(updates):
        state = sampler.update(state)
    return state, time.perf_counter() - t0


def plain_time(arch: AnyArch, ds, method: str, chains: range, updates: int, leapfrog: int):
    """(grad evals, seconds) of the ordinary loop: one nn.Module per chain (a conv net's
    ``ConvSpec.module()``), autograd gradients, the same update written with torch ops."""
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    n, lr, alpha, prior_var = len(x), 1e-5, 0.05, 0.2
    if isinstance(arch, ConvSpec):
        x = x.view(n, *arch.input)
    evals, t0 = 0, time.perf_counter()
    for k in chains:
        g = torch.Generator().manual_seed(k)
        net = arch.module() if isinstance(arch, ConvSpec) else modules.build(arch)
        params = list(net.parameters())

        def grad_u(idx, net=net, params=params):
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            loss = torch.nn.functional.cross_entropy(net(xb), yb, reduction="sum") * (n / len(xb))
            loss = loss + sum(p.square().sum() for p in params) / (2 * prior_var)
            return loss.detach(), torch.autograd.grad(loss, params)

        moms = [torch.zeros_like(p) for p in params]
        for _ in range(updates):
            if method == "hmc":  # leapfrog only (accept/reject costs one comparison)
                moms = [torch.randn(p.shape, generator=g) for p in params]
                for _ in range(leapfrog):
                    _, grads = grad_u(None)
                    with torch.no_grad():
                        for p, m, gr in zip(params, moms, grads, strict=True):
                            m.sub_(gr, alpha=1e-4)
                            p.add_(m, alpha=1e-4)
                    evals += 1
            elif method == "sgld":
                _, grads = grad_u(torch.randint(n, (128,), generator=g))
                with torch.no_grad():
                    for p, gr in zip(params, grads, strict=True):
                        noise = torch.randn(p.shape, generator=g) * (2 * lr) ** 0.5
                        p.sub_(gr, alpha=lr).add_(noise)
                evals += 1
            else:
                _, grads = grad_u(torch.randint(n, (128,), generator=g))
                with torch.no_grad():
                    for p, m, gr in zip(params, moms, grads, strict=True):
                        noise = torch.randn(p.shape, generator=g) * (2 * alpha * lr) ** 0.5
                        m.mul_(1 - alpha).sub_(gr, alpha=lr).add_(noise)
                        p.add_(m)
                evals += 1
    return evals, time.perf_counter() - t0


def parts(post: LogPosterior, cfg: SamplerConfig, chains: int, reps: int) -> dict[str, float]:
    """Milliseconds of one thread per update of ``chains`` chains, by piece (medians of
    ``reps``), the pieces as :func:`bnnctl.samplers.sgmcmc.build`'s update does them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        p, b = post.arch.n_params, cfg.batch_size
        gens = [torch.Generator().manual_seed(k) for k in range(chains)]
        theta = torch.stack([torch.randn(p, generator=g) * 0.1 for g in gens])
        mom, noise = torch.zeros_like(theta), torch.empty_like(theta)
        grad, new = torch.empty_like(theta), torch.empty_like(theta)
        idx = torch.empty((chains, b), dtype=torch.int64)
        diverged = torch.zeros(chains, dtype=torch.bool)

        def minibatches():
            for k, g in enumerate(gens):
                torch.randint(post.n, (b,), generator=g, out=idx[k])

        def gradients():
            post.energy_and_grad(theta, idx, prior=False, out=grad)

        def draws():
            for k, g in enumerate(gens):
                noise[k].normal_(0.0, 1e-3, generator=g)

        def step():  # SGHMC's: v' = ξ + (1-α) v − c θ − η ∇;  θ' = θ + v'
            noise.add_(mom, alpha=0.95).add_(theta, alpha=-1e-5).add_(grad, alpha=-1e-5)
            torch.add(theta, noise, out=new)

        def rest():  # energies and the divergence check
            nll = torch.zeros(chains, dtype=torch.float64)
            energy = (nll + 0.5 * sgmcmc._sqnorm(theta)).mul_(1.0)
            sgmcmc.check_divergence(diverged, energy, new)

        out = {}
        for name, f in [
            ("minibatch_ms", minibatches),
            ("gradients_ms", gradients),
            ("noise_ms", draws),
            ("step_ms", step),
            ("rest_ms", rest),
        ]:
            f()
            ts = []
            for _ in range(reps):
                t0 = time.perf_counter()
                f()
                ts.append(time.perf_counter() - t0)
            out[name] = round(1e3 * statistics.median(ts), 2)
        return out
    finally:
        torch.set_num_threads(before)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes (for the test suite)")
    ap.add_argument("--method", default="sghmc", choices=["sgld", "sghmc", "hmc"])
    ap.add_argument("--chains", type=int, default=64)
    ap.add_argument("--updates", type=int, default=60, help="updates of the stacked chains")
    ap.add_argument("--single-updates", type=int, default=15, help="updates of each lone chain")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--arch", default=None, help="a conv preset or cnn: string (default: the MLP)")
    ap.add_argument(
        "--parts", action="store_true", help="also time an SG update's pieces on one thread"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    arch = parse_arch(args.arch) if args.arch else ArchSpec((64, 128, 128, 10))
    conv = isinstance(arch, ConvSpec)
    ds = load_dataset("digits28" if conv and arch.input == (1, 28, 28) else "digits")
    chains, updates, single = (
        (4, 2, 1) if args.quick else (args.chains, args.updates, args.single_updates)
    )
    leapfrog = 2 if args.quick else 5
    if args.method == "hmc":
        updates, single = max(1, updates // leapfrog), max(1, single // leapfrog)
    cfg = SamplerConfig(args.method, step_size=1e-5, burn_in=0, leapfrog=leapfrog)
    sampler_post = LogPosterior.of(arch, ds, prior_var=0.2)
    sampler = build(cfg, sampler_post)
    per_update = leapfrog if args.method == "hmc" else 1
    points = ds.x_train.shape[0] if args.method == "hmc" else cfg.batch_size

    rounds = 1 if args.quick else max(1, min(args.rounds, chains, updates))
    flops = 0.0 if conv else flops_per_eval(arch, points)  # conv: no roofline figure
    state = start(sampler, arch.n_params, range(chains))
    plain_s = lone_s = together_s = 0.0
    plain_evals = lone_evals = together_evals = 0
    ratio_plain, ratio_lone, roof = [], [], []
    peaks = []
    for r in range(rounds):
        ks = range(r * chains // rounds, (r + 1) * chains // rounds)
        ups = (r + 1) * updates // rounds - r * updates // rounds
        pe, ps = plain_time(arch, ds, args.method, ks, single, leapfrog)
        le, ls = 0, 0.0
        for k in ks:
            _, dt = run(sampler, start(sampler, arch.n_params, range(k, k + 1)), single)
            le, ls = le + single * per_update, ls + dt
        state, ts = run(sampler, state, ups)
        te = chains * ups * per_update
        peak = sgemm_gflops(512 if args.quick else 2048, 3 if args.quick else 10)
        ratio_plain.append((te / ts) / (pe / ps))
        ratio_lone.append((te / ts) / (le / ls))
        roof.append(te / ts * flops / 1e9 / peak)
        peaks.append(peak)
        plain_evals, plain_s = plain_evals + pe, plain_s + ps
        lone_evals, lone_s = lone_evals + le, lone_s + ls
        together_evals, together_s = together_evals + te, together_s + ts
    plain, lone = plain_evals / plain_s, lone_evals / lone_s
    together = together_evals / together_s
    peak = statistics.median(peaks)
    gflops = together * flops / 1e9
    out = {
        "method": args.method,
        "chains": chains,
        "arch": arch.name,
        "points_per_eval": points,
        "plain_one_at_a_time_evals_per_s": round(plain, 1),
        "bnnctl_one_at_a_time_evals_per_s": round(lone, 1),
        "together_evals_per_s": round(together, 1),
        "speedup": round(statistics.median(ratio_plain), 2),
        "speedup_vs_bnnctl_single": round(statistics.median(ratio_lone), 2),
        "together_gflops": round(gflops, 1),
        "sgemm_gflops": round(peak, 1),
        "roofline_fraction": None if conv else round(statistics.median(roof), 3),
        "rounds": rounds,
        "speedup_per_round": [round(v, 2) for v in ratio_plain],
        "speedup_vs_bnnctl_single_per_round": [round(v, 2) for v in ratio_lone],
        "roofline_fraction_per_round": None if conv else [round(v, 3) for v in roof],
        "threads": torch.get_num_threads(),
        "one_at_a_time_wall_s": round(lone_s, 2),
    }
    if args.parts and args.method != "hmc":
        out["one_thread_parts"] = parts(sampler_post, cfg, chains, 3 if args.quick else 15)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.method} on {ds.name} {arch.name}, {chains} chains, {points} points per gradient, "
        f"{out['threads']} threads"
    )
    print(f"  (a)  one at a time, nn.Module + autograd : {plain:9.1f} grad evals/s")
    print(f"  (a') one at a time, bnnctl sampler M=1   : {lone:9.1f} grad evals/s")
    flop_note = "" if conv else f"  ({gflops:.1f} GFLOP/s; sgemm {peak:.0f} GFLOP/s)"
    print(
        f"  (b)  together, bnnctl sampler M={chains:<3}     : {together:9.1f} grad evals/s"
        + flop_note
    )
    print(f"  speedup b/a  : {out['speedup']:6.2f} x   (median of {rounds} rounds)")
    print(f"  speedup b/a' : {out['speedup_vs_bnnctl_single']:6.2f} x")
    if not conv:
        print(f"  roofline     : {100 * out['roofline_fraction']:6.1f} % of sgemm")
    if "one_thread_parts" in out:
        pieces = out["one_thread_parts"]
        total = sum(pieces.values())
        print(f"  one update of {chains} chains on one thread, by piece ({total:.1f} ms in all):")
        for name, ms in pieces.items():
            label = name.removesuffix("_ms")
            print(f"    {label:<11}: {ms:7.2f} ms ({100 * ms / total:4.1f} %)")


if __name__ == "__main__":
    main()
