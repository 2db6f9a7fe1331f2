"""Every path under the warehouse root, atomic file writes, and DuckDB table writes.

Everything the project reads or writes lives under one root, ``warehouse/`` in the
checkout unless ``SCHOOLQUALITY_WAREHOUSE`` points elsewhere. Paths are built here and
nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

from schoolquality_assets.partitions import FULL

ENV_VAR = "SCHOOLQUALITY_WAREHOUSE"
CHECKOUT = Path(__file__).resolve().parent.parent  # the checkout, when the package runs from one
OUTPUT_NAME = "g3_school_quality.parquet"
PROVENANCE = "table_provenance"  # which posteriors each analysis table's partition was built from
LOCK_TIMEOUT_SECONDS = 600.0  # another run writing the database holds its lock for seconds


def default_root() -> Path:
    """``warehouse/`` of the checkout when the code runs from one; for an installed package,
    ``./warehouse`` in the working directory (never inside site-packages)."""
    if (CHECKOUT / "pyproject.toml").exists() and (CHECKOUT / "warehouse").is_dir():
        return CHECKOUT / "warehouse"
    return Path.cwd() / "warehouse"


class WarehouseError(RuntimeError):
    """A warehouse path cannot be read or written; the message says which and why."""


class MissingTable(WarehouseError):
    """A table the step reads has not been materialized into this warehouse yet."""


@dataclass(frozen=True)
class Warehouse:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> "Warehouse":
        """``root``, else ``$SCHOOLQUALITY_WAREHOUSE``, else the default (``default_root``)."""
        chosen = root or os.environ.get(ENV_VAR) or default_root()
        return cls(Path(chosen).expanduser().resolve())

    @property
    def raw_dir(self) -> Path:
        return self.root / "raw"

    @property
    def database(self) -> Path:
        return self.root / "schoolquality.duckdb"

    @property
    def posteriors_dir(self) -> Path:
        return self.root / "posteriors"

    @property
    def outputs_dir(self) -> Path:
        return self.root / "outputs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    def posterior_path(self, key: str, partition: str) -> Path:
        """The last posterior of model ``key`` that passed its blocking checks."""
        return self.posteriors_dir / partition / f"posterior_{key}.nc"

    def failed_posterior_path(self, key: str, partition: str) -> Path:
        """The draws of the latest fit of ``key`` when it failed a blocking check (for diagnosis)."""
        return self.posteriors_dir / partition / f"posterior_{key}.FAILED.nc"

    def output_path(self, partition: str) -> Path:
        """``outputs/g3_school_quality.parquet`` for ``full``; other partitions are dry runs."""
        if partition == FULL:
            return self.outputs_dir / OUTPUT_NAME
        return self.outputs_dir / "dry_run" / f"g3_school_quality_{partition}.parquet"

    def archive_path(self, vintage: str, run: str) -> Path:
        return self.outputs_dir / "archive" / f"g3_school_quality_{vintage}_{run}.parquet"

    def report_path(self, partition: str) -> Path:
        return self.reports_dir / partition / "index.html"

    def figure_path(self, partition: str, name: str) -> Path:
        """A report figure, named by what it shows (e.g. ``shrinkage_vs_n``)."""
        return self.reports_dir / partition / "figures" / f"{name}.png"

    def ensure(self, path: Path) -> Path:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WarehouseError(f"cannot create warehouse folder {path}: {exc.strerror}") from exc
        return path

    @contextlib.contextmanager
    def connect(self, read_only: bool = False, lock_timeout: float = LOCK_TIMEOUT_SECONDS):
        """Open the database; while another process holds DuckDB's single-writer lock, wait."""
        self.ensure(self.root)
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                con = duckdb.connect(str(self.database), read_only=read_only)
                break
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                    raise WarehouseError(f"cannot open DuckDB database {self.database}: {exc}") from exc
                time.sleep(0.5)
            except duckdb.Error as exc:
                raise WarehouseError(f"cannot open DuckDB database {self.database}: {exc}") from exc
        try:
            yield con
        finally:
            con.close()

    def _write(self, frame: pl.DataFrame, statements: list[tuple[str, list]]) -> None:
        """Run ``statements`` against ``frame`` (registered as _incoming) in one transaction."""
        with self.connect() as con:
            con.register("_incoming", frame.to_arrow())
            try:
                con.execute("BEGIN TRANSACTION")
                for sql, params in statements:
                    con.execute(sql, params)
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("_incoming")

    def write_table(self, name: str, frame: pl.DataFrame) -> None:
        """Replace table ``name`` with ``frame`` (readers never see half)."""
        self._write(frame, [(f'CREATE OR REPLACE TABLE "{_identifier(name)}" AS SELECT * FROM _incoming', [])])

    def write_partition(self, name: str, partition: str, frame: pl.DataFrame,
                        sources: dict[str, str] | None = None) -> pl.DataFrame:
        """Replace this partition's rows of table ``name``; other partitions are untouched.

        ``sources`` (model key -> run id of the posterior the rows came from) is recorded in
        ``table_provenance`` in the same transaction, so a reader can tell whether the rows were
        built from the posteriors that are current (``read_sources``).
        """
        name = _identifier(name)
        frame = frame.with_columns(pl.lit(partition).alias("partition"))
        # UNION BY NAME: a table written by an earlier version with other columns is widened
        # (its other partitions' rows keep their values, new columns are null for them).
        statements = [
            (f'CREATE TABLE IF NOT EXISTS "{name}" AS SELECT * FROM _incoming WHERE false', []),
            (f'CREATE OR REPLACE TABLE "{name}" AS SELECT * FROM "{name}" WHERE partition <> ? '
             f'UNION ALL BY NAME SELECT * FROM _incoming', [partition]),
        ]
        if sources is not None:
            statements += [
                (f'CREATE TABLE IF NOT EXISTS {PROVENANCE} (table_name VARCHAR, partition VARCHAR, '
                 'sources VARCHAR, written_at TIMESTAMP)', []),
                (f'DELETE FROM {PROVENANCE} WHERE table_name = ? AND partition = ?', [name, partition]),
                (f'INSERT INTO {PROVENANCE} VALUES (?, ?, ?, current_timestamp)',
                 [name, partition, json.dumps(sources, sort_keys=True)]),
            ]
        self._write(frame, statements)
        return frame

    def _missing_table(self, name: str) -> MissingTable:
        return MissingTable(
            f"the warehouse {self.root} has no table {name} yet: materialize {name} first. A selection "
            f"with a leading '*' builds what a step needs, e.g. dg launch --assets '*posterior_m2' --partition full "
            f"(or 'Materialize' with its upstream in the UI); '+asset' reaches one level up only.")

    def read_sources(self, name: str, partition: str) -> dict[str, str] | None:
        """The posteriors (model key -> run id) that ``name``'s rows of ``partition`` were built
        from; None when the table has no rows for the partition or no recorded sources."""
        if not self.database.exists():
            return None
        try:
            with self.connect(read_only=True) as con:
                row = con.execute(f"SELECT sources FROM {PROVENANCE} WHERE table_name = ? AND partition = ?",
                                  [_identifier(name), partition]).fetchone()
        except duckdb.CatalogException:
            return None
        return json.loads(row[0]) if row else None

    def row_count(self, name: str) -> int | None:
        """Rows of table ``name``; None when it does not exist."""
        if not self.database.exists():
            return None
        try:
            with self.connect(read_only=True) as con:
                return con.execute(f'SELECT count(*) FROM "{_identifier(name)}"').fetchone()[0]
        except duckdb.CatalogException:
            return None

    def read_table(self, name: str) -> pl.DataFrame:
        """Every row of table ``name``; MissingTable (saying what to materialize) when it is not there."""
        return self._read(name, f'SELECT * FROM "{_identifier(name)}"', [])

    def read_partition(self, name: str, partition: str) -> pl.DataFrame:
        sql = f'SELECT * FROM "{_identifier(name)}" WHERE partition = ?'
        return self._read(name, sql, [partition]).drop("partition")

    def _read(self, name: str, sql: str, params: list) -> pl.DataFrame:
        if not self.database.exists():
            raise self._missing_table(name)
        with self.connect(read_only=True) as con:
            if not con.execute("SELECT 1 FROM information_schema.tables WHERE table_name = ?",
                               [_identifier(name)]).fetchall():
                raise self._missing_table(name)
            return pl.from_arrow(con.sql(sql, params=params).to_arrow_table())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _identifier(name: str) -> str:
    """Table names are code constants; refuse anything that is not a plain identifier."""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"not a plain table name: {name!r}")
    return name


@contextlib.contextmanager
def atomic_path(target: Path):
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    A reader sees the old file or the new one, never a partial one; on any error the
    temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise WarehouseError(f"cannot write {target}: {exc.strerror}") from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs are for other readers
        _fsync(tmp_path)                        # the bytes are on disk before the name points at them
        os.replace(tmp_path, target)
        _fsync(target.parent)                   # and the rename itself survives a crash
    except OSError as exc:
        raise WarehouseError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
