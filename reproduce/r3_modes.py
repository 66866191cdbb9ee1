"""R3 — Laurent et al.: counting distinct modes before and after symmetry removal, for a
deep ensemble, for the samples of one SGHMC chain, and for multi-mode SGHMC (chains
started from several trained checkpoints). On the digits MLP, and on OptuNet (the paper's
conv net) trained with the paper's recipe on digits28, the 28x28 stand-in for MNIST."""

from __future__ import annotations

import pandas as pd

if __package__ in (None, ""):
    import common
    import digits_zoo as zoo
    import optunet_zoo
else:
    from reproduce import common, optunet_zoo
    from reproduce import digits_zoo as zoo

ID = "R3"
TITLE = "Distinct modes before/after symmetry removal (digits MLP; OptuNet on digits28)"
#: Relative merge tolerances: 0.05 is bnnctl's default; larger ones merge more.
TOLERANCES = (0.05, 0.2, 0.5)
PLOT_TOLERANCE = 0.2
#: SGHMC's step on OptuNet (see optunet_zoo.SGHMC_STEP: larger steps fall to chance).
OPTUNET_STEP = optunet_zoo.SGHMC_STEP


def count_rows(
    store, arch: str, dataset: str, pops: dict, ref: str, tags: dict[str, str]
) -> list[dict]:
    """One row per population and tolerance: modes before, after each transform."""
    from bnnctl.stats.modes import modes_report
    from bnnctl.store import select

    rows = []
    for label, where in pops.items():
        sel = where if isinstance(where, pd.DataFrame) else select(store.manifest(), where)
        for tol in TOLERANCES:
            rep = modes_report(store, sel, tol)
            assert rep is not None, label
            after = rep["after"]
            rows.append(
                {
                    "arch": arch,
                    "dataset": dataset,
                    "population": label,
                    "tolerance": tol,
                    "n_rows": rep["before"]["n_rows"],
                    "modes_before": rep["before"]["n_modes"],
                    "modes_after": after["canon"]["n_modes"],
                    "modes_after_alignment": after[f"align-{ref}"]["n_modes"],
                    "modes_after_perm_only": after[tags["perm"]]["n_modes"],
                    "modes_after_scale_only": after[tags["scale"]]["n_modes"],
                    "l2_excess_pct_median": (rep["l2_mass_excess_pct"] or {}).get("median"),
                    "test_acc_median": float(sel["test_acc"].median()),
                }
            )
    return rows


def transform_all(store, sources, ref: str) -> dict[str, str]:
    """Canonical forms (perm + scale), weight matching to ``ref``, and each symmetry
    alone, of ``sources`` (a ``--where`` or a selection); returns the tags of the last
    two, by symmetry."""
    from bnnctl.engines.canonicalize import canonicalize

    canonicalize(store, sources)
    canonicalize(store, sources, align_to=ref)
    # which half of the canonical form separates samples: sorting alone, scaling alone
    return {
        part: canonicalize(store, sources, symmetries=[part]).report["transforms"][0]
        for part in ("perm", "scale")
    }


def run(ctx: common.Ctx) -> pd.DataFrame:
    store = ctx.store()
    table = pd.DataFrame(mlp_rows(ctx, store) + optunet_rows(ctx, store))
    ctx.note(
        "modes_after: canonical forms (perm, key mean, + scale to the L2 minimum); "
        "modes_after_alignment: every model weight-matched (align_to) to one reference "
        "(named above); perm_only / scale_only: canonicalize with that symmetry alone."
    )
    ctx.note(
        "modes: single-linkage clusters with ||a-b|| <= tol * sqrt((||a||^2+||b||^2)/2) "
        "(bnnctl.stats.modes.modes_report, the stats report's `modes` section); "
        "test_acc_median: of the population's own (non-canonical) rows."
    )
    ctx.table(table, "modes", TITLE)
    ctx.figure(plot(table), "modes")
    return table


def mlp_rows(ctx: common.Ctx, store) -> list[dict]:
    """The digits MLP's populations (built first, so the transforms below see them only)."""
    n = ctx.pick(4, 64)  # members of each population
    k = ctx.pick(2, 16)  # starting checkpoints of multi-mode SGHMC
    zoo.train_pop(ctx, store, "de", range(zoo.GT_SEED, zoo.GT_SEED + n))
    zoo.train_pop(ctx, store, "starts", range(k))
    zoo.sample_pop(ctx, store, "sghmc", "single", 1, 1, n)  # one chain, n samples
    zoo.sample_pop(ctx, store, "sghmc", "multi", k, k, n // k)
    man = store.manifest()
    ref = man[(man["population"] == "de") & (man["seed"] == zoo.GT_SEED)]["model_id"].iloc[0]
    ctx.log(f"MLP: canonicalizing, aligning to {ref}, each symmetry alone")
    tags = transform_all(store, "kind != 'canonical'", ref)
    pops = {
        "deep ensemble": "population == 'de'",
        "SGHMC, one chain": zoo.draws("sghmc-single", "sghmc"),
        f"SGHMC, multi-mode ({k} chains from {k} checkpoints)": zoo.draws("sghmc-multi", "sghmc"),
    }
    ctx.note(
        f"{zoo.arch().name} rows: dropout {zoo.DROPOUT} in training, Adam 1e-3, weight decay "
        f"{zoo.WEIGHT_DECAY}; SGHMC at the matching prior (variance "
        f"{zoo.prior_var(len(zoo.dataset().y_train)):.3g}), step 1e-5, thinning "
        f"{ctx.pick(2, 20)}; aligned to {ref}."
    )
    return count_rows(store, zoo.arch().name, "digits", pops, ref, tags)


def optunet_rows(ctx: common.Ctx, store) -> list[dict]:
    """OptuNet on digits28 with the paper's recipe: more seeds than needed are trained and
    only those that learned (test acc >= LEARNED_ACC) form the ensemble and start the
    chains."""
    from bnnctl.engines.sample import sample

    n_seeds, epochs = ctx.pick((4, 20), (48, optunet_zoo.EPOCHS))
    n = ctx.pick(4, 64)  # samples of each SGHMC population
    k_max = ctx.pick(2, 16)  # starting checkpoints of multi-mode SGHMC
    data, arch = optunet_zoo.dataset(), optunet_zoo.arch()
    learned = optunet_zoo.train_learned(ctx, store, n_seeds, epochs, population="cnn")
    trained, members, picked = learned.trained, learned.members, learned.picked
    k = min(k_max, len(members))
    # the weight-matching reference: the last member, no chain's start while k < members
    ref = str(members["model_id"].iloc[-1])
    pv = optunet_zoo.prior_var(len(data.y_train))
    scfg = optunet_zoo.sampler_config(ctx, "sghmc", len(data.y_train))
    div = {}
    for mode, starts, chains in (("single", members.iloc[:1], 1), ("multi", members.iloc[:k], k)):
        ctx.log(f"OptuNet sghmc-{mode}: {chains} chains x {n // chains} samples")
        res = sample(store, scfg, samples=n // chains, chains=chains, start=starts,
                     population=f"cnn-sghmc-{mode}", seed=1)  # fmt: skip
        div[mode] = f"{len(res.divergent)} of {chains}"
    man = store.manifest()
    draws = man[man["population"].str.startswith("cnn-sghmc-") & (man["kind"] == "sample")]
    ctx.log(f"OptuNet: canonicalizing, aligning to {ref}, each symmetry alone")
    tags = transform_all(store, pd.concat([members, draws]), ref)
    pops = {
        "deep ensemble": members,
        "SGHMC, one chain": zoo.draws("cnn-sghmc-single", "sghmc"),
        f"SGHMC, multi-mode ({k} chains from {k} checkpoints)": zoo.draws(
            "cnn-sghmc-multi", "sghmc"
        ),
    }
    ctx.note(
        f"optunet rows: {picked} form the deep ensemble (test acc median "
        f"{members['test_acc'].median():.3f}; all {n_seeds}: {trained['test_acc'].median():.3f}); "
        f"the one chain starts from the first of them ({members['model_id'].iloc[0]}, test acc "
        f"{members['test_acc'].iloc[0]:.3f}), the multi-mode chains from the first {k}. "
        f"Recipe: SGD lr {optunet_zoo.LR}, weight decay {optunet_zoo.WEIGHT_DECAY}, batch "
        f"{optunet_zoo.BATCH_SIZE}, {epochs} epochs, x{optunet_zoo.LR_GAMMA} at epochs "
        f"{optunet_zoo.milestones(epochs) or 'none'}. SGHMC at the matching prior (variance "
        f"{pv:.3g}), step {OPTUNET_STEP:g}, burn-in {scfg.burn_in}, thinning {scfg.thin}; "
        f"divergent chains: {div['single']} (one chain), {div['multi']} (multi-mode); "
        f"aligned to {ref}."
    )
    return count_rows(store, arch.name, data.name, pops, ref, tags)


def plot(table: pd.DataFrame):
    import matplotlib.pyplot as plt
    import numpy as np

    archs = list(dict.fromkeys(table["arch"]))
    fig, axes = plt.subplots(1, len(archs), figsize=(5.2 * len(archs), 3.2), squeeze=False)
    for ax, arch in zip(axes[0], archs, strict=True):
        t = table[(table["tolerance"] == PLOT_TOLERANCE) & (table["arch"] == arch)]
        x = np.arange(len(t))
        ax.bar(x - 0.27, t["modes_before"], 0.27, label="before")
        ax.bar(x, t["modes_after"], 0.27, label="canonical (sorted)")
        ax.bar(x + 0.27, t["modes_after_alignment"], 0.27, label="aligned (weight matching)")
        ax.plot(x, t["n_rows"], "k_", markersize=30, label="members")
        ax.set_xticks(x, [p.split(" (")[0] for p in t["population"]], fontsize=8)
        ax.set_title(f"{arch} on {t['dataset'].iloc[0]}", fontsize=9)
    axes[0][0].set(ylabel="distinct modes")
    fig.suptitle(f"R3: distinct modes (tolerance {PLOT_TOLERANCE})", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    return fig


if __name__ == "__main__":
    common.main_single(__import__(__name__))
