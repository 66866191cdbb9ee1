"""R6 — Izmailov et al. (ICML 2021): with full-batch HMC as the reference posterior,
deep ensembles are closer to it (agreement, total variation of the predictive) than
mean-field VI. Here on moons with a small MLP, against DE, MFVI, Laplace and SWAG."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
else:
    from reproduce import common

ID = "R6"
TITLE = "Agreement and total variation against full-batch HMC (moons MLP)"
WIDTHS = (2, 16, 16, 2)
PRIOR_VAR = 1.0


def run(ctx: common.Ctx) -> pd.DataFrame:
    from bnnctl import ArchSpec, TrainConfig, load_dataset, train
    from bnnctl.engines.sample import sample
    from bnnctl.samplers import SamplerConfig
    from bnnctl.stats.report import compare

    store = ctx.store()
    ds = load_dataset("moons")
    arch = ArchSpec(WIDTHS)
    n_train = len(ds.y_train)
    wd = 1.0 / (n_train * PRIOR_VAR)  # the prior as torch's weight decay on the mean loss
    chains, samples, burn, leap = ctx.pick((2, 4, 5, 3), (4, 60, 100, 10))
    g = ctx.pick(2, 16)  # deep-ensemble members, and the starts of the other methods
    s = ctx.pick(2, 4)  # samples per start
    ctx.log(f"HMC: {chains} chains x {samples} samples, burn-in {burn}, {leap} leapfrog steps")
    hmc = sample(
        store,
        SamplerConfig("hmc", prior_var=PRIOR_VAR, burn_in=burn, leapfrog=leap),
        samples=samples,
        chains=chains,
        dataset=ds,
        arch=arch,
        population="hmc",
        seed=1,
    )
    accept = float(hmc.accept_rate.mean()) if hmc.accept_rate is not None else float("nan")
    epochs = ctx.pick(20, 100)
    ctx.log(f"training {g} deep-ensemble members (Adam 1e-2, wd {wd:.3g}, {epochs} epochs)")
    cfg = TrainConfig(lr=1e-2, weight_decay=wd, epochs=epochs, batch_size=100)
    train(store, ds, cfg, seeds=range(g), arch=arch, population="de")
    subjects = {"deep ensemble": "population == 'de'"}
    for method, extra in (
        ("mfvi", {"burn_in": ctx.pick(10, 500)}),
        ("laplace", {}),
        ("swag", {"burn_in": ctx.pick(5, 100), "rank": ctx.pick(2, 10), "step_size": 0.01}),
    ):
        ctx.log(f"{method}: {g} chains (one per DE member) x {s} samples")
        sample(
            store,
            SamplerConfig(method, prior_var=PRIOR_VAR, **extra),
            samples=s,
            start="population == 'de'",
            population=method,
            seed=1,
        )
        subjects[method] = f"population == '{method}' and method == '{method}'"
    half = chains // 2
    ref = "population == 'hmc'"
    rows = []
    # noise floor: one half of the HMC chains against the other half
    pairs = [
        ("HMC chains (half vs half)", f"{ref} and chain < {half}", f"{ref} and chain >= {half}")
    ]
    pairs += [(k, ref, v) for k, v in subjects.items()]
    for label, a, b in pairs:
        c = compare(store, a, b, seed=0)
        gauss = [v["mmd2"] for v in c["mmd"]["before"]["gaussian"] if abs(v["multiple"] - 1) < 1e-9]
        rows.append(
            {
                "approximation": label,
                "n_reference": c["a"]["n"],
                "n": c["b"]["n"],
                "agreement": c["agreement"],
                "total_variation": c["total_variation"],
                "mmd2_gaussian_1x": gauss[0] if gauss else None,
            }
        )
    table = pd.DataFrame(rows)
    test_acc = store.manifest().query("population == 'hmc'")["test_acc"].mean()
    ctx.note(
        f"moons (400 training points), mlp:{'-'.join(map(str, WIDTHS))} ReLU, prior N(0, "
        f"{PRIOR_VAR}); HMC {chains} chains from the prior, {burn} burn-in (step size tuned), "
        f"{samples} samples each, {leap} leapfrog steps, mean acceptance {accept:.2f}, mean "
        f"test acc of samples {test_acc:.3f}."
    )
    ctx.note(
        f"DE: {g} models, Adam 1e-2, weight decay {wd:.3g} (= the prior), {epochs} epochs; "
        f"MFVI, Laplace (diag GGN) and SWAG: one chain per DE member, {s} samples each."
    )
    ctx.note("agreement: top-1 match of BMA predictives; TV = 1/2 mean ||p - p_HMC||_1.")
    ctx.table(table, "hmc_reference", TITLE)
    ctx.figure(plot(table), "hmc_reference")
    return table


def plot(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    for ax, m in zip(axes, ("agreement", "total_variation"), strict=True):
        ax.bar(range(len(table)), table[m], color=[f"C{i}" for i in range(len(table))])
        ax.set_xticks(range(len(table)), table["approximation"], rotation=25, fontsize=7)
        ax.set_title(m + " vs HMC", fontsize=9)
    fig.suptitle("R6: approximations against full-batch HMC (moons)", fontsize=10)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
