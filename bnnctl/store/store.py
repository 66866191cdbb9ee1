"""The checkpoint store: with :mod:`.table`, the only code that touches Zarr or Delta.

Layout of a store (format 2; a Zarr v3 group at a local path or an object-store URL)::

    zarr.json                          group attrs: {"bnnctl": {"format_version": 2}}
    data/<sha16>/x_train ...           the exact arrays a population was trained/tested on
    params/<population>/<block>.<id>   one params array per block attempt: [rows, n_params],
                                       one chunk per model, one shard per block,
                                       attrs {"layout": [...], "arch": {...}}
    manifest/                          the manifest, a Delta Lake table (:mod:`.table`)

Write protocol: the block's array first, at a fresh path (an attempt id); then one
manifest transaction inserting the block's rows (the commit point). A committed array is
never written again, readers never see a half-written row, and a crash at any moment
leaves at most an array that no row names (``gc`` removes it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, cast

import numpy as np
import pandas as pd
import pyarrow as pa
from deltalake import DeltaTable

from bnnctl.arch import AnyArch
from bnnctl.data import SPLITS, Dataset, validate
from bnnctl.errors import (
    EnvironmentFault,
    FormatVersionError,
    MissingDependencyError,
    StoreError,
    StoreNotFoundError,
    UsageError,
    environment_fault,
    one_line,
    os_error_in,
)
from bnnctl.store import shards
from bnnctl.store import table as delta
from bnnctl.store.format import DTYPES, FORMAT_VERSION
from bnnctl.store.manifest import (
    DEFAULT_COLUMNS,
    INT_TYPES,
    complete_rows,
    pick_columns,
    query,
)
from bnnctl.store.schema import NAMES, SQL_KINDS
from bnnctl.store.verify import Problem, gc, orphan_arrays, verify
from bnnctl.store.where import columns_of, pushdown
from bnnctl.version import __version__

if TYPE_CHECKING:  # zarr is imported on first use: `bnnctl ls` reads no array
    import zarr


#: Data arrays (often images, many zeros) compress well and are read once per command:
#: zstd at this level.
DATA_ZSTD_LEVEL = 3
MAX_STORED_DATA_BYTES = 512 * 2**20
#: Free space asked for beyond the planned arrays: a factor for chunk and shard
#: overheads, and a fixed allowance for manifest files and checkpoints.
SPACE_MARGIN = 1.2
MANIFEST_SPACE = 4 * 2**20


def _human(n: float) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.1f} GB"


def row_sha256(row: np.ndarray) -> str:
    """sha256 of one stored row's little-endian bytes."""
    little = np.ascontiguousarray(row, dtype=row.dtype.newbyteorder("<"))
    return hashlib.sha256(little.data).hexdigest()  # the buffer itself: no copy of the row


def _is_url(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _table_uri(url: str, root: str) -> str:
    if url.startswith("memory://"):
        return _memory_table(root)
    return f"{url.rstrip('/')}/manifest" if _is_url(url) else f"{root}/manifest"


#: Where the manifests of this process's memory:// stores are (made on first use).
_memory_tables: tempfile.TemporaryDirectory | None = None


def _memory_table(root: str) -> str:
    """The manifest of the memory:// store at ``root``. Its arrays are in fsspec's memory
    filesystem, shared by the whole process, but delta-rs's memory object store belongs
    to one DeltaTable object: so the table is a folder of a temporary directory that
    lives as long as the process (removed at exit), one folder per store."""
    global _memory_tables
    if _memory_tables is None:
        _memory_tables = tempfile.TemporaryDirectory(prefix="bnnctl-memory-")
    return f"{_memory_tables.name}/{hashlib.sha256(root.encode()).hexdigest()[:16]}/manifest"


def _url_to_fs(url: str) -> tuple[Any, str]:
    """fsspec's filesystem for ``url``; an unknown scheme or a missing driver package is
    the user's to fix, and said so in one line."""
    import fsspec

    scheme = url.split("://", 1)[0]
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        package = e.name or {"s3": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs"}.get(
            scheme, scheme
        )
        raise MissingDependencyError(
            f"store {url} needs the {package} package: pip install {package}"
        ) from None
    except ValueError:
        raise UsageError(
            f"unknown store URL scheme {scheme + '://'!r} in {url}; use a local path, s3://, "
            "gs://, az:// or memory://",
            "store",
        ) from None


def _group_attrs(header: bytes) -> dict:
    """The attributes of a Zarr v3 group, from its ``zarr.json`` (read without zarr, so
    that opening a store to list its rows stays fast)."""
    meta = json.loads(header)
    if not (
        isinstance(meta, dict) and meta.get("zarr_format") == 3 and meta.get("node_type") == "group"
    ):
        raise ValueError("zarr.json is not the metadata of a Zarr v3 group")
    attrs = meta.get("attributes", {})
    return attrs if isinstance(attrs, dict) else {}


def _open_group(url: str, root: str, mode: str) -> zarr.Group:
    import zarr

    zstore = (
        zarr.storage.FsspecStore.from_url(url) if _is_url(url) else zarr.storage.LocalStore(root)
    )
    return zarr.open_group(zstore, mode=mode)  # type: ignore[arg-type]


class Block(NamedTuple):
    """One block to commit (see :meth:`Store.commit_block`): its params ``[M, P]``, their
    stored dtype, its architecture, and one manifest row (a dict) per model, in order;
    ``array_path`` is where its array goes, plus an attempt id."""

    array_path: str
    params: np.ndarray
    dtype: str
    arch: AnyArch
    rows: list[dict]


class Store:
    """A bnnctl store. Open with :meth:`Store.open`."""

    def __init__(
        self,
        url: str,
        fs: Any,
        root: str,
        as_of: int | str | None = None,
        group: zarr.Group | None = None,
    ):
        self.url, self.fs, self.root = url, fs, root
        self._group = group
        #: The manifest version this store reads (None: the latest); a past version is
        #: read-only.
        self.as_of = as_of
        self._manifest: pd.DataFrame | None = None
        self._arrays: dict[str, zarr.Array] = {}
        self._writer: delta.Writer | None = None  # kept open across commits
        self._groups: set[str] = set()  # params groups known to exist

    # --- opening -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url: str | os.PathLike = "bnnctl.zarr",
        create: bool = False,
        as_of: int | str | None = None,
        migrating: bool = False,
    ) -> Store:
        """Open the store at ``url`` (a path or fsspec URL); ``create`` makes it if absent.
        ``as_of`` (a manifest version or ISO 8601 time) reads the manifest as it was then.
        Refuses a store of another format version (a format-1 store names ``bnnctl
        migrate``), a regular file, a foreign Zarr group."""
        url = str(url)
        if _is_url(url):
            fs, root = _url_to_fs(url)
        else:
            from fsspec.implementations.local import LocalFileSystem

            fs, root = LocalFileSystem(), str(Path(url.removeprefix("file://")).absolute())
            p = Path(root)
            if p.exists() and not p.is_dir():
                raise StoreError(f"store path {url} is a regular file, not a store folder")
        exists = fs.exists(f"{root}/zarr.json")
        if not exists and not create:
            raise StoreNotFoundError(f"no bnnctl store at {url} (create one with `bnnctl train`)")
        if not exists and fs.exists(root) and fs.ls(root):
            raise StoreError(f"{url} exists and is not empty, but is not a bnnctl store")
        group = None
        try:
            if exists:
                info = _group_attrs(fs.cat_file(f"{root}/zarr.json")).get("bnnctl")
            else:
                fs.makedirs(root, exist_ok=True)
                if url.startswith("memory://"):  # the manifest of a removed store goes too
                    shutil.rmtree(_table_uri(url, root), ignore_errors=True)
                delta.create(_table_uri(url, root))
                group = _open_group(url, root, mode="a")
                group.attrs["bnnctl"] = {
                    "format_version": FORMAT_VERSION,
                    "created_by": __version__,
                }
                info = group.attrs["bnnctl"]
        except (PermissionError, OSError) as e:
            raise StoreError(f"cannot open store {url} for writing: {e.strerror or e}") from None
        except Exception as e:  # zarr raises its own errors on foreign or broken groups
            raise StoreError(f"cannot open {url} as a Zarr v3 group: {e}") from None
        if not isinstance(info, dict) or "format_version" not in info:
            raise StoreError(f"{url} is a Zarr group but not a bnnctl store (no 'bnnctl' attrs)")
        version = info["format_version"]
        if type(version) is int and version < FORMAT_VERSION and not migrating:
            raise FormatVersionError(
                f"{url} has store format version {version}; run `bnnctl migrate --store {url}` "
                f"to upgrade it to version {FORMAT_VERSION} in place"
            )
        if type(version) is not int or version > FORMAT_VERSION:
            raise FormatVersionError(
                f"{url} has store format version {version!r}; this bnnctl ({__version__}) "
                f"reads version {FORMAT_VERSION} only — upgrade bnnctl"
            )
        return cls(url, fs, root, as_of, group)

    @property
    def group(self) -> zarr.Group:
        """The store's Zarr group, opened on first use (listing rows reads no array)."""
        if self._group is None:
            try:
                self._group = _open_group(self.url, self.root, mode="r+")
            except (PermissionError, OSError) as e:
                raise StoreError(
                    f"cannot open store {self.url} for writing: {e.strerror or e}"
                ) from None
        return self._group

    def _path(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    # --- manifest ------------------------------------------------------------------

    @property
    def table_uri(self) -> str:
        """Where the manifest's Delta table is (a path, or the store's URL + /manifest)."""
        return _table_uri(self.url, self.root)

    def table(self) -> DeltaTable:
        """The manifest's Delta table, at :attr:`as_of` when set."""
        return delta.open_table(self.table_uri, as_of=self.as_of)

    def manifest(self) -> pd.DataFrame:
        """All committed rows, one per checkpoint (cached until this store commits). A
        manifest naming a model twice (edited by another tool) is refused: ``bnnctl
        verify`` lists the duplicates, and nothing is built on them."""
        if self._manifest is None:
            df = delta.read(self.table())
            dup = df["model_id"].duplicated()
            if dup.any():
                raise StoreError(
                    f"the manifest names {int(dup.sum())} model(s) twice, e.g. "
                    f"{df['model_id'][dup].iloc[0]!r} (duplicate rows); run `bnnctl verify`"
                )
            self._manifest = df
        return self._manifest

    def rows(
        self,
        where: str | None = None,
        columns: list[str] | None = None,
        sort: str | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """The rows ``where`` selects, sorted, at most ``limit``, with ``columns`` (None:
        :data:`~bnnctl.store.manifest.DEFAULT_COLUMNS`; ``["all"]``: every column). Only
        the columns needed are read, so listing a million rows stays fast."""
        wanted = NAMES if columns == ["all"] else columns or DEFAULT_COLUMNS
        needed = {*wanted, *columns_of(where), (sort or "").removeprefix("-")} & set(NAMES)
        if self._manifest is not None:
            df = self._manifest
        else:
            prefilter = pushdown(where, SQL_KINDS)
            df = delta.read(self.table(), sorted(needed | {"model_id"}), prefilter)
        return pick_columns(query(df, where, sort, limit), columns)

    def population(self, name: str) -> pd.DataFrame:
        """The committed rows of population ``name`` (empty when it does not exist yet)."""
        man = self.manifest()
        return man[man["population"] == name]

    def commit_block(
        self,
        array_path: str,
        params: np.ndarray,
        dtype: str,
        arch: AnyArch,
        rows: list[dict],
    ) -> pd.DataFrame:
        """Commit one block: params ``[M, P]`` to a fresh array (``array_path`` plus an
        attempt id, never an existing path), then ``rows`` (one dict per model, in order)
        in one manifest transaction: the commit point. Rows whose ``model_id`` another
        writer committed first are not committed again (their array rows stay unnamed,
        for ``bnnctl gc``). Returns the rows this call committed."""
        return self.commit_blocks([Block(array_path, params, dtype, arch, rows)])[0]

    def commit_blocks(self, blocks: Sequence[Block]) -> list[pd.DataFrame]:
        """Commit several blocks at once: each block's params to its own fresh array, as
        :meth:`commit_block` does, then the rows of all of them in one manifest
        transaction, the commit point of them all. A manifest commit costs about as much
        for a few rows as for a thousand, so fast producers (tiny models) hand their
        blocks here a few at a time. Returns, per block, the rows this call committed (an id
        that two blocks of the batch share is committed from the first)."""
        if self.as_of is not None:
            raise StoreError(f"store opened as of manifest version {self.as_of} is read-only")
        for b in blocks:
            if b.dtype not in DTYPES:
                raise StoreError(f"unsupported dtype {b.dtype!r}; choose {' or '.join(DTYPES)}")
        if not blocks:
            return []
        paths = [f"{b.array_path}.{uuid.uuid4().hex[:8]}" for b in blocks]
        try:
            tables = [self._write_block(path, b) for path, b in zip(paths, blocks, strict=True)]
            if self._writer is None:
                self._writer = delta.Writer(self.table_uri)
            # rows whose ids another writer committed first are left out
            inserted = self._writer.commit(pa.concat_tables(tables))
        except Exception as e:
            fault = os_error_in(e)
            if fault is None:
                raise
            named = self._named(paths)
            for path in set(paths) - named:  # our fresh arrays that no committed row names
                with contextlib.suppress(Exception):
                    self.fs.rm(self._path(path), recursive=True)
            names = [p.removeprefix("params/").rsplit(".", 1)[0] for p in paths]
            what = f"block {names[0]}" if len(names) == 1 else f"blocks {', '.join(names)}"
            done = "committed before the fault" if named else "nothing committed"
            raise environment_fault(
                fault, f"committing {what}", f"{done}; re-run to continue"
            ) from None
        finally:
            self._manifest = None
        out = inserted.to_pandas(types_mapper=INT_TYPES.get)
        if len(paths) == 1:
            return [out]
        return [out[out["array"] == p].reset_index(drop=True) for p in paths]

    def _named(self, paths: list[str]) -> set[str]:
        """Those of ``paths`` a committed row names: after a fault at an unknown moment
        (perhaps after the commit point, in delta-rs's post-commit work), only the others
        may be removed. When the manifest cannot be read, all of them (``gc`` may remove
        them later)."""
        try:
            return set(delta.read(self.table(), ["array"])["array"]) & set(paths)
        except Exception:  # noqa: BLE001 (unknown: keep them all)
            return set(paths)

    def _write_block(self, array_path: str, b: Block) -> pa.Table:
        """Write a block's params to the fresh array ``array_path``; its completed rows."""
        stored = np.ascontiguousarray(b.params, dtype=np.dtype(b.dtype).newbyteorder("<"))
        self._make_parents(array_path)
        attrs = {
            "layout": [t.to_json() for t in b.arch.layout],
            "arch": json.loads(b.arch.to_json()),
        }
        # written by hand, not through zarr: zarr would write the shard chunk by chunk
        shards.write_array(self.fs, self._path(array_path), stored, attrs)
        return complete_rows(b.rows, array_path, stored, b.arch, [row_sha256(r) for r in stored])

    def _make_parents(self, array_path: str) -> None:
        """The Zarr groups above ``array_path`` (``params``, ``params/<population>``),
        written where absent (once per store object: they are never removed)."""
        parts = array_path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            group = "/".join(parts[:i])
            if group in self._groups:
                continue
            meta = self._path(group, "zarr.json")
            if not self.fs.exists(meta):
                self.fs.makedirs(self._path(group), exist_ok=True)
                self.fs.pipe_file(meta, shards.GROUP_JSON.encode())
            self._groups.add(group)

    def check_writable(self, planned_bytes: int = 0) -> None:
        """Before any work: refuse a store that cannot be written, or (on a local disk) has
        no room for about ``planned_bytes`` more. An object store reports its own faults
        at the first write."""
        if self.as_of is not None:
            raise StoreError(f"store opened as of manifest version {self.as_of} is read-only")
        if _is_url(self.url):
            return
        probe = Path(self.root) / f".write-check-{uuid.uuid4().hex[:8]}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise EnvironmentFault(
                f"cannot write to {self.url}: {(e.strerror or str(e)).lower()}"
            ) from None
        need = int(planned_bytes * SPACE_MARGIN) + MANIFEST_SPACE
        free = shutil.disk_usage(self.root).free
        if need > free:
            raise EnvironmentFault(
                f"not enough space for {self.url}: the planned arrays need about "
                f"{_human(need)}, and {_human(free)} is free"
            )

    # --- params --------------------------------------------------------------------

    def array(self, path: str) -> zarr.Array:
        if path not in self._arrays:
            try:
                # manifest ``array`` paths name the arrays commit_block created
                self._arrays[path] = cast("zarr.Array", self.group[path])
            except KeyError:
                raise StoreError(f"params array {path} is missing from the store") from None
        return self._arrays[path]

    def read_params(self, rows: pd.DataFrame) -> np.ndarray:
        """Params of the given manifest rows as float32 ``[len(rows), n_params]``, in order.
        Every row is checked against its recorded sha256 as it is read: weights that left
        the store are the weights that were committed (a :class:`StoreError` names the
        first model that is not)."""
        if rows.empty:
            raise StoreError("no rows to read")
        widths = set(rows["n_params"])
        if len(widths) != 1:
            raise StoreError("the selected rows have different parameter counts (architectures)")
        out = np.empty((len(rows), int(widths.pop())), dtype=np.float32)
        all_rows = rows["row"].to_numpy(dtype=np.int64)
        for path, idx in rows.groupby("array", sort=False).indices.items():
            block = self._read_rows(str(path), all_rows[idx])
            for i, stored in zip(idx, block, strict=True):
                if row_sha256(stored) != rows["sha256"].iat[i]:
                    raise StoreError(
                        f"model {rows['model_id'].iat[i]}: its stored weights do not match their "
                        f"sha256 (corrupted or missing data in {path}); run `bnnctl verify`"
                    )
            out[idx] = block
        return out

    def read_array(self, path: str, meta: dict | None = None) -> tuple[np.ndarray, dict]:
        """Every row of the params array ``path`` in its stored dtype, and its attributes:
        a shard file per request (:mod:`.shards`) when it has the layout commit_block
        writes, through zarr otherwise. ``meta``: its ``zarr.json``, when already read.
        Raises what the read raises."""
        if meta is None:
            meta = json.loads(self.fs.cat_file(self._path(path, "zarr.json")))
        data = shards.read_whole(self.fs, self._path(path), meta)
        if data is not None:
            return data, meta.get("attributes") or {}
        arr = self.array(path)
        return cast(np.ndarray, arr[:]), dict(arr.attrs)

    def _read_rows(self, path: str, r: np.ndarray) -> np.ndarray:
        """Rows ``r`` of the params array ``path``, in its stored dtype."""
        arr = self.array(path)
        if r.size and (r.min() < 0 or r.max() >= arr.shape[0]):
            raise StoreError(f"rows {r.min()}..{r.max()} are outside {path} ({arr.shape[0]} rows)")
        try:  # zarr types reads as array-or-scalar; these 2-D selections are arrays
            if len(r) * 4 >= arr.shape[0]:  # most of the shard: one sequential read
                return self.read_array(path, arr.metadata.to_dict())[0][r]
            uniq, inverse = np.unique(r, return_inverse=True)
            return cast(np.ndarray, arr.oindex[uniq, :])[inverse]
        except (ValueError, OSError) as e:  # a truncated or unreadable chunk
            raise StoreError(f"params array {path} is unreadable: {one_line(str(e))}") from None

    # --- data ----------------------------------------------------------------------

    def put_dataset(self, ds: Dataset) -> str | None:
        """Store the dataset's arrays once (idempotent); return their group path, or None
        when the data is too large to keep (then only its hash is recorded)."""
        if sum(a.nbytes for a in ds.arrays().values()) > MAX_STORED_DATA_BYTES:
            return None
        path = f"data/{ds.sha256[:16]}"
        if self._complete_data(path, ds.sha256):
            return path
        from zarr.codecs import ZstdCodec
        from zarr.errors import ContainsArrayError, ContainsGroupError

        try:
            g = self.group.require_group(path)
        except ContainsGroupError:  # another writer created it between the check and here
            g = cast("zarr.Group", self.group[path])
        for key, a in ds.arrays().items():
            if ds.image_shape is not None and key.startswith("x"):
                a = a.reshape(len(a), *ds.image_shape)  # images as [N, C, H, W]
            for overwrite in (False, True):
                try:
                    g.create_array(
                        name=key,
                        data=a,
                        chunks=a.shape,
                        compressors=ZstdCodec(level=DATA_ZSTD_LEVEL),
                        overwrite=overwrite,
                    )
                    break
                except ContainsArrayError:  # another writer's (or a crashed one's) copy
                    if self._same_array(g, key, a):
                        break  # the same content: kept as it is
        g.attrs.update({"name": ds.name, "task": ds.task})
        g.attrs["sha256"] = ds.sha256  # written last: marks the data complete
        return path

    @staticmethod
    def _same_array(g: zarr.Group, key: str, a: np.ndarray) -> bool:
        """Whether ``g[key]`` already holds exactly ``a`` (written by a concurrent writer
        of the same dataset; a copy cut short by a crash does not)."""
        try:
            have = np.asarray(cast("zarr.Array", g[key])[:])
        except Exception:  # noqa: BLE001 (missing chunk, half-written metadata: not the same)
            return False
        return bool(have.shape == a.shape and have.dtype == a.dtype and np.array_equal(have, a))

    def _complete_data(self, path: str, sha: str) -> bool:
        try:
            return self.group[path].attrs.get("sha256") == sha
        except KeyError:
            return False

    def load_data(self, path: str) -> Dataset:
        try:
            # put_dataset made ``path`` a group of the SPLITS arrays, named by a string
            g = cast("zarr.Group", self.group[path])
            name = cast(str, g.attrs.get("name", path))
            return validate(
                name, {k: cast(np.ndarray, cast("zarr.Array", g[k])[:]) for k in SPLITS}
            )
        except KeyError:
            raise StoreError(f"data {path} is missing from the store") from None

    # --- engine state (resume points; never named by the manifest) -----------------

    def write_state(self, path: str, arrays: dict[str, np.ndarray], attrs: dict) -> None:
        """Save an engine's resume state as ``state/<path>``: arrays, then ``attrs`` with a
        completion mark (written last). Replaces any state already at that path."""
        g = self.group.create_group(f"state/{path}", overwrite=True)
        for key, a in arrays.items():
            a = np.ascontiguousarray(a)  # ndim >= 1, so the chunk shape is never empty
            g.create_array(
                name=key,
                data=a,
                chunks=tuple(max(1, s) for s in a.shape),
                compressors=None,
                overwrite=True,
            )
        g.attrs.update({**attrs, "complete": True})

    def read_state(self, path: str) -> tuple[dict[str, np.ndarray], dict] | None:
        """The state saved at ``state/<path>``, or None when absent or incomplete."""
        try:
            g = cast("zarr.Group", self.group[f"state/{path}"])  # write_state made it a group
        except KeyError:
            return None
        attrs = dict(g.attrs)
        if not attrs.pop("complete", False):
            return None
        return {k: cast(np.ndarray, a[...]) for k, a in g.arrays()}, attrs

    def remove_state(self, path: str) -> None:
        """Delete ``state/<path>`` if present."""
        with contextlib.suppress(KeyError):
            del self.group[f"state/{path}"]

    # --- checks ------------------------------------------------------------------

    def verify(self, scheduler: str | None = None) -> list[Problem]:
        """Every problem :func:`bnnctl.store.verify.verify` finds (empty when sound);
        ``scheduler`` re-hashes the arrays on Dask workers."""
        return verify(self, scheduler)

    def orphan_arrays(self) -> list[str]:
        """Params arrays no manifest row names (see :func:`bnnctl.store.verify.orphan_arrays`)."""
        return orphan_arrays(self)

    def compact(self, vacuum_hours: float | None = None) -> dict:
        """Merge the manifest's small files, write a checkpoint, and with
        ``vacuum_hours`` remove files no version of the last that many hours needs (never
        less than a week's retention unless asked: readers of older versions need them)."""
        if vacuum_hours is not None and not vacuum_hours >= 0:
            raise UsageError(f"`vacuum_hours` must be >= 0, got {vacuum_hours}", "vacuum_hours")
        dt = self.table()
        out = delta.compact(dt)
        if vacuum_hours is not None:
            removed = dt.vacuum(
                retention_hours=int(vacuum_hours), dry_run=False, enforce_retention_duration=False
            )
            out["vacuumed_files"] = len(removed)
        self._manifest = None
        return out

    def maybe_compact(self) -> dict | None:
        """:meth:`compact` when runs have left many small manifest files."""
        return delta.maybe_compact(self.table_uri)

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> list[str]:
        """Remove unnamed arrays and leftovers (see :func:`bnnctl.store.verify.gc`)."""
        return gc(self, grace_seconds, dry_run)
