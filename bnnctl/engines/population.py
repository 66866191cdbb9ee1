"""What every engine shares about a population: its name, its identity (a hash of
everything its rows depend on), each member's own random stream, and the refusal to
extend a population with another configuration.

A population is a named set of rows made with one configuration. Member ``k``'s random
stream is seeded by (configuration digest, ``k``) alone, so member ``k`` is the same
whatever block or process makes it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from bnnctl.errors import ConflictError, DataError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from bnnctl.data import Dataset
    from bnnctl.store import Store

#: Population names (and so model-id prefixes): letters, digits, '_', '.', '-', not
#: starting with '.' or '-' (safe as file and folder names, and in shell pipelines).
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
#: Largest seed: model ids and block names print it in 6+ digits; Python ints are exact.
MAX_SEED = 2**62


def check_name(name: str) -> str:
    """``name`` if it is a valid population name, else a :class:`UsageError`."""
    if not re.fullmatch(NAME_PATTERN, name):
        raise UsageError(
            f"population name {name!r} may use letters, digits, '_', '.', '-' only "
            "(and may not start with '.' or '-')"
        )
    return name


def name_from(text: str, fallback: str) -> str:
    """A valid population name made from free text (e.g. a folder name)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text).lstrip(".-") or fallback


def digest(description: Any) -> str:
    """sha256 of a JSON-able description, keys sorted: a configuration's identity."""
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()


def generator(config_digest: str, index: int) -> torch.Generator:
    """Member ``index``'s own random stream, from the configuration digest alone."""
    import torch

    seed = hashlib.sha256(f"{config_digest}:{index}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(seed[:8], "little") >> 1)


def data_columns(dataset: Dataset, data_path: str | None) -> dict[str, str | None]:
    """The manifest columns naming the data a row was made and evaluated with."""
    return {
        "dataset": dataset.name,
        "task": dataset.task,
        "data": data_path,
        "data_sha256": dataset.sha256,
    }


def claim_population(
    store: Store, name: str, config_digest: str, describe: Callable[[pd.Series], str]
) -> pd.DataFrame:
    """Claim population ``name`` for a writer of configuration ``config_digest`` and
    return its committed rows: a :class:`ConflictError` (worded by ``describe(row)``)
    when any row was made with another configuration, or when a concurrent writer of
    another configuration claimed it first, before either committed a row
    (:mod:`bnnctl.store.claims`)."""
    from bnnctl.store import claims

    mine = store.population(name)
    other = mine[mine["config_sha256"] != config_digest]
    if not other.empty:
        raise ConflictError(describe(other.iloc[0]))
    held = claims.claim(store, name, config_digest)
    if held is not None:
        raise ConflictError(
            f"population {name!r} is being written with another configuration (claimed "
            f"{held['created_at']}); pass another `population` NAME, or, if no run is "
            "writing it, `bnnctl gc` releases a claim of a population with no rows after "
            "its grace period"
        )
    return mine


def check_finite(
    ids: Sequence[str], params: np.ndarray, metrics: dict[str, np.ndarray], what: str, hint: str
) -> None:
    """A :class:`DataError` naming the first model of ``what`` (a block, a file) whose
    weights or metrics hold NaN or Inf: such a row would be committed as if sound."""
    import numpy as np

    bad = ~np.isfinite(params).all(axis=1)
    for v in metrics.values():
        bad |= ~np.isfinite(np.asarray(v, dtype=np.float64))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{what}: model {ids[i]} has non-finite weights or metrics (NaN or Inf; "
            f"{int(bad.sum())} of {len(ids)} models); {hint}, or pass `allow_nonfinite` to "
            "commit them anyway (nothing committed)"
        )


def available_memory() -> int | None:
    """Bytes of memory a new allocation can use (Linux ``MemAvailable``); None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(need: int, what: str, hint: str, device: torch.device | None = None) -> None:
    """Refuse, before any work, a request whose estimated peak memory ``need`` exceeds what
    is available (a :class:`UsageError` with the estimate, instead of an out-of-memory
    kill halfway through): the machine's memory, or the GPU's free memory on ``cuda``."""
    if device is not None and device.type == "cuda":
        import torch

        have: int | None = torch.cuda.mem_get_info(device)[0]
        what = f"{what} on {device}"
    else:
        have = available_memory()
    if have is not None and need > have:
        raise UsageError(
            f"{what} needs about {human_bytes(need)} of memory, and {human_bytes(have)} is "
            f"available; {hint}"
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
