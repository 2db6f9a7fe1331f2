"""Warehouse paths, atomic file writes and DuckDB table writes.

Everything the project reads or writes lives under one root, ``warehouse/`` in the
checkout unless ``SCHOOLQUALITY_WAREHOUSE`` points elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb
import polars as pl

ENV_VAR = "SCHOOLQUALITY_WAREHOUSE"
DEFAULT_ROOT = Path(__file__).resolve().parent.parent / "warehouse"


class WarehouseError(RuntimeError):
    """A warehouse path cannot be read or written; the message says which and why."""


@dataclass(frozen=True)
class Warehouse:
    root: Path

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None) -> "Warehouse":
        chosen = root or os.environ.get(ENV_VAR) or DEFAULT_ROOT
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

    @property
    def stan_cache_dir(self) -> Path:
        return self.root / "stan_cache"

    def ensure(self, path: Path) -> Path:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WarehouseError(f"cannot create warehouse folder {path}: {exc.strerror}") from exc
        return path

    @contextlib.contextmanager
    def connect(self, read_only: bool = False):
        self.ensure(self.root)
        try:
            con = duckdb.connect(str(self.database), read_only=read_only)
        except duckdb.Error as exc:
            raise WarehouseError(f"cannot open DuckDB database {self.database}: {exc}") from exc
        try:
            yield con
        finally:
            con.close()

    def write_table(self, name: str, frame: pl.DataFrame) -> None:
        """Replace table ``name`` with ``frame`` in one transaction (readers never see half)."""
        with self.connect() as con:
            con.register("_incoming", frame.to_arrow())
            try:
                con.execute("BEGIN TRANSACTION")
                con.execute(f'CREATE OR REPLACE TABLE "{_identifier(name)}" AS SELECT * FROM _incoming')
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("_incoming")

    def read_table(self, name: str) -> pl.DataFrame:
        with self.connect(read_only=True) as con:
            return pl.from_arrow(con.execute(f'SELECT * FROM "{_identifier(name)}"').to_arrow_table())


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
        os.replace(tmp_path, target)
    except OSError as exc:
        raise WarehouseError(f"cannot write {target}: {exc.strerror}") from exc
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
