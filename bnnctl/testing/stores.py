"""Store fixtures for tests: weights committed as if imported, on a store's own data."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bnnctl.arch import AnyArch
from bnnctl.store import Store


def commit_imported(
    path: str | Path, name: str, params: np.ndarray, arch: AnyArch, **extra
) -> None:
    """Commit ``params [M, P]`` as imported models ``name.0``, ``name.1``, ... of
    population ``name``, on the data of the store's first row (``extra``: more columns)."""
    st = Store.open(path)
    base = st.manifest().iloc[0].to_dict()
    rows = [
        {
            "model_id": f"{name}.{i}",
            "kind": "import",
            "method": "import",
            "population": name,
            "dataset": base["dataset"],
            "task": base["task"],
            "data": base["data"],
            "data_sha256": base["data_sha256"],
            "config_sha256": "0" * 64,
            **extra,
        }
        for i in range(len(params))
    ]
    st.commit_block(f"params/{name}/b0", params, "float32", arch, rows)
