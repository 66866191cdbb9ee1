"""Population claims: which configuration a population is written with, decided before
anything is trained.

A population is the rows made with one configuration. The committed rows say which one
(``config_sha256``), but two runs that start together on an empty population see no rows,
and with disjoint seeds neither commit collides with the other: both would land, mixing
two configurations under one name. So every writer first claims the population:

    <store>/claims/<population>.json   {"config_sha256": ..., "created_at": ...}

created only if absent (``O_EXCL`` on a local disk, a conditional put on S3, as fsspec's
``"xb"`` mode does), never rewritten. The first claim wins; a writer whose configuration
differs from the claim's is refused before it trains. A claim whose population never got
a row (its run died first) is released by ``bnnctl gc`` after the grace period.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bnnctl.store.store import Store

FOLDER = "claims"
#: How long a reader waits for a claim a local writer has created but not yet filled.
FILL_WAIT_S = 5.0


def path(store: Store, population: str) -> str:
    return store._path(FOLDER, f"{population}.json")


def claim(store: Store, population: str, config_sha256: str) -> dict[str, Any] | None:
    """Claim ``population`` for ``config_sha256``: None when the claim is (now) this
    configuration's, else the claim of the configuration that holds it."""
    store.check_writable()  # a read-only store is refused in the store's own words
    p = path(store, population)
    body = {"config_sha256": config_sha256, "created_at": datetime.now(UTC).isoformat()}
    try:
        store.fs.makedirs(store._path(FOLDER), exist_ok=True)
        with store.fs.open(p, "xb") as f:
            f.write(json.dumps(body).encode())
        return None
    except FileExistsError:
        pass
    held = read(store, population)
    return None if held is not None and held["config_sha256"] == config_sha256 else held


def read(store: Store, population: str) -> dict[str, Any] | None:
    """The population's claim, or None if it has none. A claim created but still empty
    (a local writer between its exclusive create and its write) is waited for."""
    p = path(store, population)
    deadline = time.monotonic() + FILL_WAIT_S
    while True:
        try:
            return json.loads(store.fs.cat_file(p))
        except FileNotFoundError:
            return None
        except json.JSONDecodeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def release_unused(
    store: Store, populated: set[str], grace_seconds: float, dry_run: bool
) -> list[str]:
    """Remove the claims of populations with no committed row (``populated``: those with
    rows) that are older than ``grace_seconds`` (a run younger than that may still be
    training its first block); return their paths."""
    try:
        names = store.fs.ls(store._path(FOLDER), detail=False)
    except FileNotFoundError:
        return []
    gone = []
    now = datetime.now(UTC)
    for p in sorted(names):
        name = str(p).rsplit("/", 1)[-1].removesuffix(".json")
        if name in populated:
            continue
        held = read(store, name)
        if held is not None:
            age = (now - datetime.fromisoformat(held["created_at"])).total_seconds()
            if age < grace_seconds:
                continue
        if not dry_run:
            store.fs.rm_file(path(store, name))
        gone.append(f"{FOLDER}/{name}.json")
    return gone
