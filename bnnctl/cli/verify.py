"""`bnnctl verify`."""

from __future__ import annotations

import typer

from bnnctl.cli.common import (
    DEFAULT_STORE,
    AsOfOpt,
    QuietOpt,
    SchedulerOpt,
    StoreOpt,
    command,
    log,
)


@command("verify")
def verify_cmd(
    as_of: AsOfOpt = None,
    scheduler: SchedulerOpt = None,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Re-hash every checkpoint the manifest names and check manifest, arrays and schema.

    Prints one line per problem (model id, where, what) and exits 1 if there is any.
    Arrays that no manifest row names (leftovers of interrupted runs) are listed on stderr
    but are not problems.

    Example: bnnctl verify --store runs.zarr
    """
    from bnnctl.scheduler import require

    require(scheduler)
    from bnnctl.store import Store

    st = Store.open(store, as_of=as_of)
    problems = st.verify(scheduler)
    for p in problems:
        typer.echo(f"{p.model_id or '-'}\t{p.where}\t{p.message}")
    if problems:
        log(quiet, f"{len(problems)} problem(s) in {st.url}")
        raise typer.Exit(1)
    for path in st.orphan_arrays() if as_of is None else []:
        log(quiet, f"note: {path} is named by no manifest row (left by an interrupted run)")
    version = f" (manifest version {as_of})" if as_of is not None else ""
    log(quiet, f"ok: {len(st.manifest())} checkpoints verified in {st.url}{version}")
