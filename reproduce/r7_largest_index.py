"""R7 — Laurent et al.: for each input, the index of the hidden unit with its largest
first-layer weight. Under a permutation-invariant posterior it is uniform over the units;
the paper reports that HMC's is not (its chains do not mix over permutations). Tested
with a chi-square test against uniform for HMC samples, a deep ensemble, and their
canonical forms (where sorting makes it non-uniform by construction)."""

from __future__ import annotations

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    import common
else:
    from reproduce import common

ID = "R7"
TITLE = "Largest-weight index: uniform? (moons mlp:2-16-1)"
WIDTHS = (2, 16, 1)
PRIOR_VAR = 1.0


def largest_index(params: np.ndarray) -> np.ndarray:
    """[n, P] rows -> [n, inputs] index of the hidden unit with the largest weight from
    each input (``0.weight`` is [hidden, inputs] at offset 0)."""
    h, d = WIDTHS[1], WIDTHS[0]
    return params[:, : h * d].reshape(len(params), h, d).argmax(1)


def test_row(label: str, idx: np.ndarray, note: str) -> dict:
    from scipy.stats import chisquare

    counts = np.bincount(idx.ravel(), minlength=WIDTHS[1])
    stat, p = chisquare(counts)
    return {
        "population": label,
        "n_models": len(idx),
        "n_observations": int(idx.size),
        "chi2": float(stat),
        "dof": WIDTHS[1] - 1,
        "p_value": float(p),
        "uniform_at_5pct": bool(p >= 0.05),
        "max_share": float(counts.max() / counts.sum()),
        "counts": " ".join(map(str, counts)),
        "note": note,
    }


def run(ctx: common.Ctx) -> pd.DataFrame:
    from bnnctl import ArchSpec, TrainConfig, load_dataset, train
    from bnnctl.engines.canonicalize import canonicalize
    from bnnctl.engines.sample import sample
    from bnnctl.samplers import SamplerConfig
    from bnnctl.store import select

    store = ctx.store()
    ds = load_dataset("moons")
    arch = ArchSpec(WIDTHS)
    # many chains, few samples each: the test that needs independent observations takes
    # one sample per chain (512 chains x 2 inputs = 1,024 of them)
    chains, samples, burn, leap, thin = ctx.pick((4, 4, 5, 3, 1), (512, 8, 100, 10, 5))
    g = ctx.pick(16, 256)
    ctx.log(f"HMC: {chains} chains x {samples} samples (thin {thin}), burn-in {burn}")
    sample(
        store,
        SamplerConfig("hmc", prior_var=PRIOR_VAR, burn_in=burn, leapfrog=leap, thin=thin),
        samples=samples,
        chains=chains,
        dataset=ds,
        arch=arch,
        population="hmc",
        seed=1,
    )
    wd = 1.0 / (len(ds.y_train) * PRIOR_VAR)
    ctx.log(f"training a deep ensemble of {g}")
    cfg = TrainConfig(lr=1e-2, weight_decay=wd, epochs=ctx.pick(20, 100), batch_size=100)
    train(store, ds, cfg, seeds=range(g), arch=arch, population="de", block_size=256)
    canonicalize(store)  # default: perm (key mean) + scale to the L2 minimum
    man = store.manifest()

    def idx(where: str) -> np.ndarray:
        rows = select(man, where).sort_values(["chain", "sample_index", "seed"])
        return largest_index(store.read_params(rows))

    hmc = select(man, "population == 'hmc'")
    last = hmc[hmc["sample_index"] == hmc["sample_index"].max()]
    rows = [
        test_row(
            "HMC samples", idx("population == 'hmc'"), "all samples (correlated within a chain)"
        ),
        test_row(
            "HMC, last sample per chain",
            largest_index(store.read_params(last)),
            "independent draws, low power",
        ),
        test_row("deep ensemble", idx("population == 'de'"), "independent"),
        test_row("HMC canonical", idx("population == 'hmc.canon'"), "perm + scale"),
        test_row("deep ensemble canonical", idx("population == 'de.canon'"), "perm + scale"),
    ]
    # mixing over permutations: does a chain's index ever change across its samples?
    ordered = hmc.sort_values(["chain", "sample_index"])
    per_chain = largest_index(store.read_params(ordered)).reshape(chains, samples, WIDTHS[0])
    constant = float((per_chain == per_chain[:, :1]).all(1).mean())
    rows[0]["frac_chain_inputs_index_constant"] = constant
    table = pd.DataFrame(rows)
    ctx.note(
        f"moons, mlp:{'-'.join(map(str, WIDTHS))} ReLU, prior N(0, {PRIOR_VAR}); HMC "
        f"{chains} chains from the prior, {burn} burn-in, {samples} samples thinned by {thin}, "
        f"{leap} leapfrog steps; DE: {g} models, Adam 1e-2, the matching weight decay."
    )
    ctx.note(
        "observations: (model, input) pairs; scipy.stats.chisquare of the unit-index counts "
        f"against uniform over {WIDTHS[1]} units. Samples of one chain are not independent, "
        "so the all-samples p-value overstates the evidence; frac_chain_inputs_index_constant: "
        "share of (chain, input) pairs whose index never changes over the chain's samples."
    )
    ctx.table(table, "largest_index", TITLE)
    ctx.figure(plot(table), "largest_index")
    return table


def plot(table: pd.DataFrame):
    import matplotlib.pyplot as plt

    show = table[table["population"] != "HMC, last sample per chain"]
    fig, axes = plt.subplots(1, len(show), figsize=(3 * len(show), 2.8), sharey=True)
    for ax, (_, r) in zip(axes, show.iterrows(), strict=True):
        c = np.array(r["counts"].split(), dtype=float)
        ax.bar(range(len(c)), c / c.sum())
        ax.axhline(1 / len(c), color="k", lw=1, ls="--")
        ax.set_title(f"{r['population']}\np = {r['p_value']:.2g}", fontsize=8)
        ax.set_xlabel("hidden unit", fontsize=7)
    axes[0].set_ylabel("share of (model, input)", fontsize=7)
    fig.suptitle("R7: index of the largest first-layer weight", fontsize=10, y=1.06)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
