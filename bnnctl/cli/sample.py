"""`bnnctl sample`."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from bnnctl.cli.common import DEFAULT_STORE, QuietOpt, StoreOpt, command, log, progress_bar, select
from bnnctl.cli.train import ActivationOpt, ArchOpt, DataOpt, DatasetOpt, DropoutOpt, dataset_and_arch
from bnnctl.errors import UsageError
from bnnctl.sample import check_request, make_plan, run_plan
from bnnctl.samplers import APPROXIMATIONS, METHODS, SamplerConfig
from bnnctl.store import Store
from bnnctl.train import check_arch


def _opt(flag: str, text: str):
    return typer.Option(flag, help=text)


@command("sample")
def sample_cmd(
    method: Annotated[str, _opt("--method", f"Sampler: {', '.join(METHODS)}.")] = "sghmc",
    chains: Annotated[int | None, _opt("--chains", "Chains run together (default 8; with --from, one per selected checkpoint, or a multiple).")] = None,
    samples: Annotated[int, _opt("--samples", "Samples kept per chain.")] = 100,
    burn_in: Annotated[int | None, _opt("--burn-in", "Updates before the first kept sample (MCMC), or fitting steps (mfvi, swag). Default per method.")] = None,
    thin: Annotated[int, _opt("--thin", "Updates between kept samples (MCMC); steps between SWAG snapshots.")] = 1,
    step_size: Annotated[float | None, _opt("--step-size", "SGLD/SGHMC step on the summed energy, HMC initial leapfrog step, MFVI Adam / SWAG SGD learning rate.")] = None,
    prior_var: Annotated[float, _opt("--prior-var", "Variance of the N(0, v I) prior; with the summed NLL, torch weight decay wd means v = 1/(N wd).")] = 1.0,
    temperature: Annotated[float, _opt("--temperature", "Posterior temperature T: target p(θ|D)^(1/T).")] = 1.0,
    friction: Annotated[float, _opt("--friction", "SGHMC friction α (1 − momentum).")] = 0.05,
    noise_std: Annotated[float, _opt("--noise-std", "Gaussian likelihood noise std (regression data).")] = 1.0,
    batch_size: Annotated[int, _opt("--batch-size", "Minibatch size (SGLD, SGHMC, MFVI, SWAG).")] = 128,
    leapfrog: Annotated[int, _opt("--leapfrog", "HMC leapfrog steps per proposal.")] = 10,
    schedule: Annotated[str, _opt("--schedule", "SGLD/SGHMC step schedule: constant or poly.")] = "constant",
    fisher: Annotated[str, _opt("--fisher", "Laplace curvature: ggn or ef (empirical Fisher).")] = "ggn",
    rank: Annotated[int, _opt("--rank", "SWAG low-rank columns (= snapshots).")] = 20,
    start: Annotated[str | None, _opt("--from", "Start chains at the checkpoints this manifest query selects, e.g. \"kind == 'train' and seed < 8\".")] = None,
    seed: Annotated[int, _opt("--seed", "Seed of the chains' random streams.")] = 0,
    segment: Annotated[int | None, _opt("--segment", "Samples per chain per committed block (default: about 256 rows a block).")] = None,
    dataset: DatasetOpt = "digits",
    data: DataOpt = None,
    arch: ArchOpt = None,
    activation: ActivationOpt = "relu",
    dropout: DropoutOpt = 0.0,
    population: Annotated[str | None, _opt("--population", "Population name (default: <dataset>-<method>).")] = None,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Sample posteriors of many chains at once (SGLD, SGHMC, HMC, MFVI, Laplace, SWAG, MC
    dropout) into the store; re-running resumes a killed run.

    Example: bnnctl sample --method hmc --chains 8 --samples 200 --burn-in 50 --prior-var 0.2
    """
    cfg = SamplerConfig(method, step_size, prior_var, temperature, noise_std, burn_in, thin,
                        batch_size, friction, schedule, leapfrog, fisher=fisher, rank=rank)
    check_request(cfg, samples, chains, segment, start is not None)
    kw = {}
    if start is None:
        kw["dataset"], kw["arch"] = dataset_and_arch(dataset, data, arch, activation, dropout)
        check_arch(kw["arch"], kw["dataset"])
        st = Store.open(store, create=True)
    else:
        if not start.strip():
            raise UsageError("--from needs a manifest query")
        st = Store.open(store)
        kw["start"] = select(st.manifest(), start)
    plan = make_plan(st, cfg, samples, chains, population=population, segment=segment, seed=seed, **kw)
    result = _run(st, plan, quiet)
    _report(result, plan, quiet, store)


def _run(st, plan, quiet):
    cfg = plan.config
    fit = cfg.burn_in if cfg.method != "swag" else cfg.burn_in + cfg.rank * cfg.thin
    total = (fit + plan.samples) if cfg.method in APPROXIMATIONS else cfg.burn_in + plan.samples * cfg.thin
    t0 = time.perf_counter()
    with progress_bar(quiet, unit="steps") as bar:
        task = bar.add_task(f"sample {cfg.method}", total=total, done=0, todo=total, rate="")

        def advance(n: int) -> None:
            bar.advance(task, n)
            done = int(bar.tasks[task].completed)
            bar.update(task, done=done, rate=f"{done / (time.perf_counter() - t0):.1f} steps/s")

        return run_plan(st, plan, advance)


def _report(result, plan, quiet: bool, store: str) -> None:
    rows = result.rows
    msg = f"committed {len(rows)} rows ({plan.chains} chains x {plan.samples} samples"
    msg += f", {result.skipped_segments} segments already in the store)" if result.skipped_segments else ")"
    if result.accept_rate is not None:
        msg += f"; acceptance median {float(sorted(result.accept_rate)[len(result.accept_rate) // 2]):.3f}"
    if result.divergent_transitions:
        msg += f"; {result.divergent_transitions} divergent transitions rejected"
    log(quiet, f"{msg}; population {plan.population}; store {store}")
    if result.divergent:
        chains = ", ".join(f"{c} (step {s})" for c, s in sorted(result.divergent.items()))
        log(False, f"warning: {len(result.divergent)} of {plan.chains} chains diverged (non-finite energy) "
                   f"and their later samples were not stored: chains {chains}; lower --step-size")
