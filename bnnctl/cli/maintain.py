"""`bnnctl migrate`, `bnnctl compact` and `bnnctl gc`: keeping a store in shape."""

from __future__ import annotations

from typing import Annotated

import typer

from bnnctl.cli.common import DEFAULT_STORE, QuietOpt, StoreOpt, command, log


@command("migrate")
def migrate_cmd(store: StoreOpt = DEFAULT_STORE, quiet: QuietOpt = False) -> None:
    """Upgrade a store to the current format in place (format 1's Parquet folder manifest
    becomes a Delta Lake table), checked row by row; re-run it after a crash.

    Example: bnnctl migrate --store runs.zarr
    """
    from bnnctl.store.migrate import migrate

    res = migrate(store)
    if not res["changed"]:
        log(quiet, f"{store} is already store format {res['to']} ({res['rows']} rows)")
        return
    log(
        quiet,
        f"migrated {store} from store format {res['from']} to {res['to']}: {res['rows']} rows, "
        "checked; the old manifest files are kept in manifest.v1/",
    )


@command("compact", flags={"vacuum_hours": "--vacuum"})
def compact_cmd(
    vacuum: Annotated[
        float | None,
        typer.Option(
            "--vacuum",
            help="Also delete manifest files that no version of the last HOURS hours needs "
            "(--as-of readers of older versions need them).",
        ),
    ] = None,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Merge the manifest's small files into large ones and write a checkpoint, so that
    reading it stays fast after many commits (runs do this on their own past a threshold).

    Example: bnnctl compact --store runs.zarr --vacuum 168
    """
    from bnnctl.store import Store

    res = Store.open(store).compact(vacuum_hours=vacuum)
    msg = f"manifest files {res['files_before']} -> {res['files_after']} (version {res['version']})"
    if "vacuumed_files" in res:
        msg += f"; {res['vacuumed_files']} unreferenced files deleted"
    log(quiet, msg)


@command("gc", flags={"grace_seconds": "--grace"})
def gc_cmd(
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="Only remove what has been untouched this many seconds (a writer "
            "may still be filling younger arrays).",
        ),
    ] = 3600.0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List, do not remove.")] = False,
    store: StoreOpt = DEFAULT_STORE,
    quiet: QuietOpt = False,
) -> None:
    """Remove params arrays that no committed row names (left by interrupted or losing
    writers), zarr .partial leftovers, and the claims of populations that never got a
    row; prints each path on stdout.

    Example: bnnctl gc --store runs.zarr --dry-run
    """
    from bnnctl.store import Store

    removed = Store.open(store).gc(grace_seconds=grace, dry_run=dry_run)
    for path in removed:
        typer.echo(path)
    log(quiet, f"{'would remove' if dry_run else 'removed'} {len(removed)} path(s)")
