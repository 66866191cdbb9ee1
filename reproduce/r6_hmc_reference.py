"""R6 — Izmailov et al. (ICML 2021): with full-batch HMC as the reference posterior,
deep ensembles are closer to it (agreement, total variation of the predictive) than
mean-field VI. Here with small MLPs on moons and on digits, against DE, MFVI, Laplace
and SWAG, with the HMC chains' own half-vs-half distance as the noise floor."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
else:
    from reproduce import common

ID = "R6"
TITLE = "Agreement and total variation against full-batch HMC (small MLPs)"
#: problem -> (dataset, widths, HMC leapfrog steps and chains in a full run)
PROBLEMS = {
    "moons": ("moons", (2, 16, 16, 2), 10, 8),
    "digits": ("digits", (64, 16, 10), 20, 16),
}
PRIOR_VAR = 1.0


def run_problem(ctx: common.Ctx, store, problem: str) -> tuple[list[dict], str]:
    from bnnctl import ArchSpec, TrainConfig, load_dataset, train
    from bnnctl.engines.sample import sample
    from bnnctl.samplers import SamplerConfig
    from bnnctl.stats.report import compare

    name, widths, leap_full, chains_full = PROBLEMS[problem]
    ds = load_dataset(name)
    arch = ArchSpec(widths)
    wd = 1.0 / (len(ds.y_train) * PRIOR_VAR)  # the prior as torch's weight decay
    chains, samples, burn, leap = ctx.pick((2, 4, 5, 3), (chains_full, 50, 200, leap_full))
    g = ctx.pick(2, 32)  # deep-ensemble members, and the starts of the other methods
    s = ctx.pick(2, 4)  # samples per start
    ctx.log(f"{problem} HMC: {chains} chains x {samples}, burn-in {burn}, leapfrog {leap}")
    hmc = sample(
        store,
        SamplerConfig("hmc", prior_var=PRIOR_VAR, burn_in=burn, leapfrog=leap),
        samples=samples,
        chains=chains,
        dataset=ds,
        arch=arch,
        population=f"{problem}-hmc",
        seed=1,
    )
    accept = float(hmc.accept_rate.mean()) if hmc.accept_rate is not None else float("nan")
    epochs = ctx.pick(20, 100)
    ctx.log(f"{problem}: {g} deep-ensemble members (Adam 1e-2, wd {wd:.3g}, {epochs} epochs)")
    cfg = TrainConfig(lr=1e-2, weight_decay=wd, epochs=epochs, batch_size=100)
    train(store, ds, cfg, seeds=range(g), arch=arch, population=f"{problem}-de")
    subjects = {"deep ensemble": f"population == '{problem}-de'"}
    de = f"population == '{problem}-de'"
    vi_steps = {"burn_in": ctx.pick(10, 1000)}
    swag = {"burn_in": ctx.pick(5, 100), "rank": ctx.pick(2, 10), "step_size": 0.01}
    runs = (  # label, method, start checkpoints, chains, extra config
        ("mfvi, one q per DE member", "mfvi", de, None, vi_steps),
        ("mfvi, one q", "mfvi", f"{de} and seed == 0", 1, vi_steps),
        ("laplace", "laplace", de, None, {}),
        ("swag", "swag", de, None, swag),
    )
    for i, (label, method, start, chains_m, extra) in enumerate(runs):
        n_s = s if chains_m is None else g * s  # every approximation has g * s draws
        ctx.log(f"{problem} {label}: {n_s} samples per chain")
        pop = f"{problem}-{method}-{i}"
        sample(
            store,
            SamplerConfig(method, prior_var=PRIOR_VAR, **extra),
            samples=n_s,
            chains=chains_m,
            start=start,
            population=pop,
            seed=1,
        )
        subjects[label] = f"population == '{pop}' and method == '{method}'"
    ref = f"population == '{problem}-hmc'"
    half = chains // 2
    pairs = [("HMC half vs half", f"{ref} and chain < {half}", f"{ref} and chain >= {half}")]
    pairs += [(k, ref, v) for k, v in subjects.items()]
    rows = []
    for label, a, b in pairs:
        c = compare(store, a, b, seed=0)
        rows.append(
            {
                "problem": problem,
                "approximation": label,
                "n_reference": c["a"]["n"],
                "n": c["b"]["n"],
                "agreement": c["agreement"],
                "total_variation": c["total_variation"],
            }
        )
    man = store.manifest()
    acc = man[man["population"] == f"{problem}-hmc"]["test_acc"].mean()
    note = (
        f"{problem}: mlp:{'-'.join(map(str, widths))} ReLU, prior N(0, {PRIOR_VAR}); HMC "
        f"{chains} chains from the prior, {burn} burn-in (step size tuned), {samples} samples "
        f"each, {leap} leapfrog steps, mean acceptance {accept:.2f}, mean sample test acc "
        f"{acc:.3f}; DE {g} models (Adam 1e-2, weight decay {wd:.3g} = the prior, {epochs} "
        f"epochs); MFVI, Laplace (diag GGN), SWAG: one chain per DE member, {s} samples "
        f"each; 'mfvi, one q': a single q fitted from DE member 0, {g * s} samples."
    )
    return rows, note


def run(ctx: common.Ctx) -> pd.DataFrame:
    store = ctx.store()
    rows = []
    for problem in ctx.pick(("moons",), tuple(PROBLEMS)):
        r, note = run_problem(ctx, store, problem)
        rows += r
        ctx.note(note)
    ctx.note(
        "agreement: top-1 match of the BMA predictives on the test points; TV = 1/2 mean "
        "||p - p_HMC||_1; 'HMC half vs half': chains 0..C/2-1 against the rest (noise floor)."
    )
    table = pd.DataFrame(rows)
    ctx.table(table, "hmc_reference", TITLE)
    ctx.figure(plot(table), "hmc_reference")
    return table


def plot(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    probs = list(dict.fromkeys(table["problem"]))
    fig, axes = plt.subplots(len(probs), 2, figsize=(9, 2.8 * len(probs)), squeeze=False)
    for row, problem in zip(axes, probs, strict=True):
        t = table[table["problem"] == problem]
        for ax, m in zip(row, ("agreement", "total_variation"), strict=True):
            ax.bar(range(len(t)), t[m], color=[f"C{i}" for i in range(len(t))])
            ax.set_xticks(range(len(t)), t["approximation"], rotation=20, fontsize=7)
            ax.set_title(f"{problem}: {m} vs HMC", fontsize=9)
    fig.suptitle("R6: approximations against full-batch HMC", fontsize=10)
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
