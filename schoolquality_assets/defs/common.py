"""Shared asset plumbing: the owner, table metadata for the UI, markdown previews, images."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path
from types import ModuleType

import dagster as dg
import polars as pl

from schoolquality_assets.columns import DESCRIPTIONS
from schoolquality_assets.models import specs
from schoolquality_assets.warehouse import Warehouse

OWNER = "team:education-data"

_DAGSTER_TYPES = {
    pl.Utf8: "string", pl.Int64: "int64", pl.Int32: "int32", pl.Float64: "float64",
    pl.Boolean: "bool", pl.UInt32: "uint32", pl.UInt64: "uint64",
}


def code_version_of(*sources: ModuleType | Path) -> str:
    """Code version of an asset: a hash of the source files its result depends on (modules or
    files such as the report template), so that editing one marks the asset stale in the UI."""
    digest = hashlib.sha256()
    for source in sources:
        path = Path(source.__file__) if isinstance(source, ModuleType) else Path(source)
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def table_metadata(frame: pl.DataFrame, preview_rows: int = 5) -> dict:
    schema = dg.TableSchema(columns=[
        dg.TableColumn(name, _DAGSTER_TYPES.get(dtype, str(dtype)), description=DESCRIPTIONS.get(name))
        for name, dtype in frame.schema.items()
    ])
    return {
        "dagster/row_count": frame.height,
        "dagster/column_schema": schema,
        "preview": dg.MetadataValue.md(markdown(frame.head(preview_rows))),
    }


def markdown(frame: pl.DataFrame, digits: int = 4) -> str:
    if frame.width == 0:
        return "(empty)"
    def cell(v):
        if v is None:
            return ""
        return f"{v:.{digits}g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join(lines)


def image_md(png: bytes, alt: str) -> dg.MetadataValue:
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def load_posterior(wh: Warehouse, key: str, partition: str):
    """The model's last passed posterior; fails the step when its latest fit failed the gate."""
    try:
        return specs.load_passed_posterior(wh.posterior_path(key, partition), wh.failed_posterior_path(key, partition))
    except specs.PosteriorRefused as exc:
        raise dg.Failure(description=f"posterior_{key}[{partition}]: {exc}") from exc


def rounded(value, digits: int = 4):
    """A float for display in the UI (4 significant digits); tables keep full precision."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    return value
