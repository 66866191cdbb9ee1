"""Population claims (bnnctl.store.claims): two writers of one population with different
configurations are refused before training even when their seeds never collide, and gc
releases the claim of a population whose run died before its first commit."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest

from bnnctl import ArchSpec, Store, TrainConfig, load_dataset, train
from bnnctl.errors import ConflictError
from bnnctl.store import claims

TINY = ["--dataset", "moons", "--arch", "mlp:2-1", "--epochs", "1"]


def _train(store, lr: float, seeds, population="moons"):
    return train(
        store,
        load_dataset("moons"),
        TrainConfig(epochs=1, lr=lr),
        seeds,
        ArchSpec((2, 1)),
        population,
    )


def test_a_claim_by_another_configuration_refuses_before_training(tmp_path):
    store = Store.open(tmp_path / "s.zarr", create=True)
    assert claims.claim(store, "moons", "a" * 64) is None  # a concurrent run got here first
    with pytest.raises(ConflictError, match="being written with another configuration"):
        _train(store, 0.01, range(4, 8))
    assert not (tmp_path / "s.zarr" / "params").exists()  # nothing trained or written
    assert Store.open(tmp_path / "s.zarr").manifest().empty


def test_the_same_configuration_extends_its_claimed_population(tmp_path):
    url = tmp_path / "s.zarr"
    first = _train(url, 0.01, range(2))
    held = claims.read(Store.open(url), "moons")
    assert held is not None and held["config_sha256"] == first.rows["config_sha256"].iloc[0]
    more = _train(url, 0.01, range(2, 4))  # another run, same settings: allowed
    assert len(more.rows) == 2
    with pytest.raises(ConflictError, match="was trained with lr"):  # rows say why first
        _train(url, 0.02, range(4, 6))


def test_racing_runs_with_other_settings_and_disjoint_seeds_leave_one_configuration(tmp_path):
    s = str(tmp_path / "race.zarr")
    Store.open(s, create=True)
    common = ["train", *TINY, "--store", s, "--quiet", "--block-size", "8"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "bnnctl", *common, "--seeds", "32", *extra],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for extra in (["--lr", "0.001"], ["--lr", "0.002", "--seed-start", "100"])
    ]
    errors = [p.communicate(timeout=300)[1].decode() for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], errors
    loser = errors[[p.returncode for p in procs].index(2)]
    assert loser.count("\n") == 1 and (
        "being written with another configuration" in loser or "was trained with lr" in loser
    ), loser
    st = Store.open(s)
    df = st.manifest()
    assert df["config_sha256"].nunique() == 1 and len(df) == 32 and st.verify() == []


def test_gc_releases_only_old_claims_of_populations_without_rows(tmp_path):
    url = tmp_path / "s.zarr"
    _train(url, 0.01, range(2))  # population "moons" has rows: its claim stays
    store = Store.open(url)
    claims.claim(store, "dead", "b" * 64)  # a run that died before its first commit
    assert store.gc(grace_seconds=3600) == []  # young: its run may still be training
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    store.fs.pipe_file(
        claims.path(store, "dead"),
        json.dumps({"config_sha256": "b" * 64, "created_at": old}).encode(),
    )
    assert store.gc(grace_seconds=3600, dry_run=True) == ["claims/dead.json"]
    assert claims.read(store, "dead") is not None  # a dry run removes nothing
    assert store.gc(grace_seconds=3600) == ["claims/dead.json"]
    assert claims.read(store, "dead") is None and claims.read(store, "moons") is not None
    _train(url, 0.02, range(2), population="dead")  # the name is free again
