"""Benchmark `bnnctl canonicalize`: perm + scale + function check, models/s.

Compares, in one run, the vectorised engine (bnnctl.engines.canonicalize.transform_block on
blocks of stacked models) with a plain per-model Python/numpy implementation of the
same canonical form (checked to agree), on random default MLPs (mlp:64-128-128-10,
nn.Linear-style uniform weights) and the digits test set (360 points). Store I/O is
not timed. Then measures how often each sort key changes the canonical unit order
under small relative weight noise, on quickly trained nets.

    python scripts/bench_canonicalize.py            # 3072 models
    python scripts/bench_canonicalize.py --quick    # tiny sizes (run by the tests)
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch

import bnnctl.engines.canonicalize as engine
from bnnctl import ArchSpec, TrainConfig, load_dataset
from bnnctl.engines.canonicalize import transform_block
from bnnctl.symmetry.action import l2_mass
from bnnctl.symmetry.canonical import canonicalize
from bnnctl.symmetry.transform import KEYS, PC_SQUARINGS, PC_STEPS, SCALE_TOL, make_transform


def random_models(arch: ArchSpec, n: int, seed: int = 0) -> torch.Tensor:
    """``[n, P]`` float32, each tensor uniform in ±1/sqrt(fan_in) (nn.Linear's init)."""
    g = torch.Generator().manual_seed(seed)
    cols = []
    for t in arch.layout:
        fan_in = t.shape[1] if len(t.shape) == 2 else arch.widths[arch.layout.index(t) // 2]
        b = 1 / math.sqrt(fan_in)
        cols.append(torch.rand(n, t.size, generator=g) * 2 * b - b)
    return torch.cat(cols, 1)


# --- the plain per-model implementation -------------------------------------------


def plain_canonical(ws: list[np.ndarray], bs: list[np.ndarray], tol: float = SCALE_TOL):
    """One model, numpy float64: min-L2 scaling by per-layer balancing, then sort each
    hidden layer by the pc key (float32 power iteration as in bnnctl.symmetry; bias
    tie-break), layer by layer."""
    ws, bs = [w.astype(np.float64) for w in ws], [b.astype(np.float64) for b in bs]
    hidden = len(ws) - 1
    s = [np.zeros(w.shape[0]) for w in ws[:-1]]
    for _ in range(10_000):
        moved = 0.0
        for k in range(hidden):
            left = np.exp(-2 * s[k - 1]) if k > 0 else np.ones(ws[k].shape[1])
            right = np.exp(2 * s[k + 1]) if k + 1 < hidden else np.ones(ws[k + 1].shape[0])
            inn, out = (ws[k] ** 2) @ left, right @ (ws[k + 1] ** 2)
            new = 0.25 * (np.log(out) - np.log(inn))
            moved = max(moved, float(np.abs(new - s[k]).max()))
            s[k] = new
        if moved <= tol:
            break
    for k in range(hidden):
        lam = np.exp(s[k])
        ws[k] *= lam[:, None]
        bs[k] *= lam
        ws[k + 1] /= lam[None, :]
    for k in range(hidden):
        u = ws[k]
        a = u.astype(np.float32).T @ u.astype(np.float32)
        for _ in range(PC_SQUARINGS):
            a = a / np.linalg.norm(a)
            a = a @ a
        d = np.ones(u.shape[1], dtype=np.float32)
        for _ in range(PC_STEPS):
            d = a @ d
            d /= np.linalg.norm(d)
        key = u @ d.astype(np.float64)
        qk, qb = _quantise(key), _quantise(bs[k])
        order = sorted(range(len(key)), key=lambda j: (-qk[j], -qb[j]))
        ws[k], bs[k], ws[k + 1] = ws[k][order], bs[k][order], ws[k + 1][:, order]
    return ws, bs


def _quantise(a: np.ndarray) -> np.ndarray:
    return np.round(a / max(np.abs(a).max() * 1e-9, np.finfo(np.float64).tiny))


def plain_run(arch: ArchSpec, flat: torch.Tensor, x: torch.Tensor) -> tuple[np.ndarray, float]:
    """Per model: split, canonicalise, build nn.Sequential twice, compare outputs."""
    out, worst = [], 0.0
    for row in flat:
        sd = arch.state_dict(row)
        ws = [sd[t.name].numpy() for t in arch.layout if t.name.endswith("weight")]
        bs = [sd[t.name].numpy() for t in arch.layout if t.name.endswith("bias")]
        cw, cb = plain_canonical(ws, bs)
        new = np.concatenate(
            [a.astype(np.float32).ravel() for pair in zip(cw, cb, strict=True) for a in pair]
        )
        nets = [_module(arch, torch.from_numpy(r)) for r in (row.numpy(), new)]
        with torch.no_grad():
            a, b = nets[0](x), nets[1](x)
        worst = max(worst, float((a - b).abs().max() / a.abs().max()))
        out.append(new)
    return np.stack(out), worst


def _module(arch: ArchSpec, row: torch.Tensor) -> torch.nn.Sequential:
    mods = []
    for i in range(arch.n_layers):
        mods.append(torch.nn.Linear(arch.widths[i], arch.widths[i + 1]))
        if i < arch.n_layers - 1:
            mods.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*mods)
    net.load_state_dict(arch.state_dict(row))
    return net


# --- key stability --------------------------------------------------------------------


def stability(arch: ArchSpec, flat: torch.Tensor, eps: float, trials: int, seed: int = 1) -> dict:
    """Per key: mean fraction of hidden-unit positions whose occupant changes when each
    tensor gets N(0, (eps·rms)²) noise, and near-ties per model."""
    g = torch.Generator().manual_seed(seed)
    res = {}
    for key in KEYS:
        t = make_transform(arch, key=key)
        base = canonicalize(arch, flat, t)
        moved = []
        for _ in range(trials):
            noisy = flat.double().clone()
            for v in arch.views(noisy).values():
                v.add_(
                    torch.randn(v.shape, generator=g, dtype=v.dtype) * eps * v.pow(2).mean().sqrt()
                )
            c = canonicalize(arch, noisy, t)
            moved.append(
                np.mean(
                    [
                        (a != b).double().mean().item()
                        for a, b in zip(base.perms, c.perms, strict=True)
                    ]
                )
            )
        res[key] = (float(np.mean(moved)), float(base.near_ties.double().mean()))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=3072)
    ap.add_argument("--block", type=int, default=256)
    ap.add_argument("--baseline-n", type=int, default=64, help="models run through the plain loop")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs; the best is reported")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the tests")
    a = ap.parse_args()
    if a.quick:
        a.n, a.block, a.baseline_n = 64, 32, 4
    arch = ArchSpec((64, 128, 128, 10))
    ds = load_dataset("digits")
    x = torch.from_numpy(ds.x_test)
    flat = random_models(arch, a.n)
    t = make_transform(arch, ["perm", "scale"])
    print(
        f"# {a.n} x {arch.name} relu, perm+scale (key {t.key}, l2) "
        f"+ check on {len(x)} test points, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    from threadpoolctl import threadpool_limits

    reps = 1 if a.quick else a.repeats
    nb = min(a.baseline_n, a.n)

    def vectorised(key: str, n_threads: int):
        def run():
            engine.CHECK_THREADS = n_threads
            tk = make_transform(arch, ["perm", "scale"], key=key)
            return [
                transform_block(arch, flat[i : i + a.block], tk, x) for i in range(0, a.n, a.block)
            ]

        return run

    def plain():
        with engine.threads(1), threadpool_limits(1):  # torch and numpy's BLAS on one thread
            return plain_run(arch, flat[:nb], x)

    configs = {(k, 1): vectorised(k, 1) for k in dict.fromkeys((t.key, "pc", "mass"))}
    configs["plain", 1] = plain
    if torch.get_num_threads() > 1:
        configs[t.key, torch.get_num_threads()] = vectorised(t.key, torch.get_num_threads())
    # rounds interleave the configurations, so that a change of load hits all of them
    times = {c: [] for c in configs}
    out = {}
    for _ in range(reps):
        for c, fn in configs.items():
            w, p = time.perf_counter(), time.process_time()
            out[c] = fn()
            times[c].append((time.perf_counter() - w, time.process_time() - p))
    for (key, n_threads), ts in times.items():
        n = nb if key == "plain" else a.n
        wall, cpu = min(t[0] for t in ts), min(t[1] for t in ts)
        if key == "plain":
            worst = out[key, n_threads][1]
            label = f"plain per-model loop ({nb} models), {n_threads} thread"
        else:
            worst = max(float((r.max_diff / (r.allowed / 1e-5)).max()) for r in out[key, n_threads])
            label = f"vectorised, key {key}, check on {n_threads} thread(s)"
        print(
            f"{label:45s} {n / wall:7.1f} models/s wall, {n / cpu:7.1f} per CPU-second; "
            f"max relative output diff {worst:.2e}"
        )
    fast = out["pc", 1]  # the plain loop sorts by the pc key
    agree = (
        float(np.abs(out["plain", 1][0] - fast[0].params[:nb]).max())
        if nb <= a.block
        else float("nan")
    )
    best = {c: min(t[0] for t in ts) for c, ts in times.items()}
    print(
        f"speed-up, check on 1 thread, key {t.key}, vs plain: "
        f"{best['plain', 1] / nb * a.n / best[t.key, 1]:.1f}x "
        f"(wall); max |plain - vectorised (key pc)| weight {agree:.2e}"
    )

    print(
        "\n# sort-key stability: fraction of hidden units whose canonical position changes under "
        "N(0, (eps*rms)^2) noise per tensor; near-ties per model (eps=1e-3 column's nets)"
    )
    sets = [
        ("adam, 10 epochs", TrainConfig(epochs=1 if a.quick else 10)),
        (
            "sgd+wd 1e-4, 20 epochs",
            TrainConfig("sgd", lr=0.05, weight_decay=1e-4, epochs=1 if a.quick else 20),
        ),
    ]
    for name, cfg in sets:
        trained = quick_trained(arch, ds, 2 if a.quick else 8, cfg)
        scaled = canonicalize(arch, trained, make_transform(arch, ["scale"])).params
        excess = 100 * (l2_mass(arch, trained.double()) / l2_mass(arch, scaled) - 1)
        print(
            f"{name} ({len(trained)} nets; L2 mass above the scaling minimum: median "
            f"{excess.median():.1f} %, range {excess.min():.1f}-{excess.max():.1f} %)"
        )
        print(
            f"  {'key':8s} "
            + " ".join(f"{f'eps={e:g}':>12s}" for e in (1e-4, 1e-3, 1e-2))
            + "  near-ties"
        )
        table = {e: stability(arch, trained, e, 1 if a.quick else 3) for e in (1e-4, 1e-3, 1e-2)}
        for key in KEYS:
            print(
                f"  {key:8s} "
                + " ".join(f"{table[e][key][0]:12.4f}" for e in table)
                + f"  {table[1e-3][key][1]:9.2f}"
            )


def quick_trained(arch: ArchSpec, ds, n: int, cfg: TrainConfig) -> torch.Tensor:
    from bnnctl.engines.train import Population, train_models

    return train_models(Population("bench", arch, cfg, ds), list(range(n)))[0]


if __name__ == "__main__":
    main()
