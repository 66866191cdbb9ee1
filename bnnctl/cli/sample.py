"""`bnnctl sample`."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bnnctl.arch.spec import Activation
from bnnctl.cli.common import (
    DEFAULT_STORE,
    ActivationOpt,
    ArchOpt,
    DataOpt,
    DatasetOpt,
    DeviceOpt,
    DropoutOpt,
    QuietOpt,
    SchedulerOpt,
    StoreOpt,
    command,
    dataset_and_arch,
    log,
    progress,
)
from bnnctl.samplers.config import Fisher, Method, SamplerConfig, Schedule


def _opt(flag: str, text: str) -> Any:
    return typer.Option(flag, help=text)


@command("sample", flags={"start": "--from", "where": "--from"})
def sample_cmd(
    method: Annotated[Method, _opt("--method", "Sampler.")] = Method.sghmc,
    chains: Annotated[
        int | None,
        _opt(
            "--chains",
            "Chains run together (default 8; with --from, one per selected checkpoint, or a "
            "multiple).",
        ),
    ] = None,
    samples: Annotated[int, _opt("--samples", "Samples kept per chain.")] = 100,
    burn_in: Annotated[
        int | None,
        _opt(
            "--burn-in",
            "Updates before the first kept sample (MCMC), or fitting steps (mfvi, swag). "
            "Default per method.",
        ),
    ] = None,
    thin: Annotated[
        int, _opt("--thin", "Updates between kept samples (MCMC); steps between SWAG snapshots.")
    ] = 1,
    step_size: Annotated[
        float | None,
        _opt(
            "--step-size",
            "SGLD/SGHMC step on the summed energy, HMC initial leapfrog step, MFVI Adam / "
            "SWAG SGD learning rate.",
        ),
    ] = None,
    prior_var: Annotated[
        float,
        _opt(
            "--prior-var",
            "Variance of the N(0, v I) prior; with the summed NLL, torch weight decay wd "
            "means v = 1/(N wd).",
        ),
    ] = 1.0,
    temperature: Annotated[
        float, _opt("--temperature", "Posterior temperature T: target p(θ|D)^(1/T).")
    ] = 1.0,
    friction: Annotated[float, _opt("--friction", "SGHMC friction α (1 − momentum).")] = 0.05,
    noise_std: Annotated[
        float, _opt("--noise-std", "Gaussian likelihood noise std (regression data).")
    ] = 1.0,
    batch_size: Annotated[
        int, _opt("--batch-size", "Minibatch size (SGLD, SGHMC, MFVI, SWAG).")
    ] = 128,
    leapfrog: Annotated[int, _opt("--leapfrog", "HMC leapfrog steps per proposal.")] = 10,
    schedule: Annotated[
        Schedule, _opt("--schedule", "SGLD/SGHMC step schedule.")
    ] = Schedule.constant,
    fisher: Annotated[
        Fisher, _opt("--fisher", "Laplace curvature: GGN or empirical Fisher.")
    ] = Fisher.ggn,
    rank: Annotated[int, _opt("--rank", "SWAG low-rank columns (= snapshots).")] = 20,
    start: Annotated[
        str | None,
        _opt(
            "--from",
            'Start chains at the checkpoints this --where expression selects, e.g. "kind == '
            "'train' and seed < 8\".",
        ),
    ] = None,
    seed: Annotated[int, _opt("--seed", "Seed of the chains' random streams.")] = 0,
    segment: Annotated[
        int | None,
        _opt(
            "--segment", "Samples per chain per committed block (default: about 256 rows a block)."
        ),
    ] = None,
    dataset: DatasetOpt = "digits",
    data: DataOpt = None,
    arch: ArchOpt = None,
    activation: ActivationOpt = Activation.relu,
    dropout: DropoutOpt = 0.0,
    population: Annotated[
        str | None, _opt("--population", "Population name (default: <dataset>-<method>).")
    ] = None,
    scheduler: SchedulerOpt = None,
    device: DeviceOpt = "auto",
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Sample posteriors of many chains at once (SGLD, SGHMC, HMC, MFVI, Laplace, SWAG, MC
    dropout) into the store; re-running resumes a killed run.

    Example: bnnctl sample --method hmc --chains 8 --samples 200 --burn-in 50 --prior-var 0.2
    """
    from bnnctl.device import checked
    from bnnctl.engines.sample import make_plan, run_plan
    from bnnctl.scheduler import require

    # before make_plan creates a store
    dev = checked(device, require(scheduler) is not None)

    cfg = SamplerConfig(
        method.value,
        step_size,
        prior_var,
        temperature,
        noise_std,
        burn_in,
        thin,
        batch_size,
        friction,
        schedule.value,
        leapfrog,
        fisher=fisher.value,
        rank=rank,
    )
    ds, spec = (
        (None, None)
        if start is not None
        else dataset_and_arch(dataset, data, arch, activation.value, dropout)
    )
    st, plan = make_plan(store, cfg, samples, chains, ds, spec, start, population, segment, seed)
    with progress(quiet, f"sample {cfg.method}", plan.total_steps, unit="steps") as advance:
        result = run_plan(st, plan, advance, scheduler, dev)
    rows = result.rows
    msg = f"committed {len(rows)} rows ({plan.chains} chains x {plan.samples} samples"
    msg += (
        f", {result.skipped_segments} segments already in the store)"
        if result.skipped_segments
        else ")"
    )
    if result.accept_rate is not None:
        msg += (
            f"; acceptance median "
            f"{float(sorted(result.accept_rate)[len(result.accept_rate) // 2]):.3f}"
        )
    if result.divergent_transitions:
        msg += f"; {result.divergent_transitions} divergent transitions rejected"
    log(quiet, f"{msg}; population {plan.population}; store {store}")
    if result.divergent:
        which = ", ".join(f"{c} (step {s})" for c, s in sorted(result.divergent.items()))
        log(
            False,
            f"warning: {len(result.divergent)} of {plan.chains} chains diverged (non-finite "
            f"energy) "
            f"and their later samples were not stored: chains {which}; lower --step-size",
        )
