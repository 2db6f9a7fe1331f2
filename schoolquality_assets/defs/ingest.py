"""Ingest and sample: landing files -> raw -> rejected/valid -> cleaned/filtered -> eligible -> analysis sample.

Tables computed together are one multi-asset each (raw + synthetic_truth, rejected + valid,
cleaned + filtered), so every table appears in the asset graph and its lineage. Each multi-asset
can be subset: a selection that names one of the pair (``*eligible_schools``, a click on one table
in the UI) computes the pair's step and writes only the tables selected.
"""


import dagster as dg
import polars as pl

from schoolquality_assets.defs.common import (
    OWNER,
    code_version_of,
    markdown,
    table_metadata,
)
from schoolquality_assets.defs.partitions import sample_partitions
from schoolquality_assets.defs.resources import WarehouseResource
from schoolquality_assets.ingest import contract, eqao, filters, landing, synthetic
from schoolquality_assets.partitions import FULL

INGEST = dict(group_name="ingest", owners=[OWNER], kinds={"duckdb", "polars"},
              code_version=code_version_of(contract, eqao, filters, landing, synthetic))


def _landing(warehouse: WarehouseResource) -> tuple[landing.Landing, str, pl.DataFrame | None]:
    """What the landing folder holds, or the synthetic province (and its truth) when it holds no files."""
    wh = warehouse.get()
    raw_dir = wh.ensure(wh.raw_dir)
    files = contract.list_landing_files(raw_dir)
    if files:
        return landing.load(raw_dir), f"landing files ({len(files)})", None
    stray = contract.ignored_files(raw_dir)
    if stray:  # a delivery in the wrong format must not be replaced by synthetic data
        raise contract.LandingFileError(
            f"{raw_dir} holds files but none is a landing file (.csv or .parquet): "
            f"{[contract.relative_name(p, raw_dir) for p in stray]}"
        )
    province = synthetic.generate_province(seed=warehouse.synthetic_seed)
    obs = province.observations.with_columns(pl.all().cast(pl.Utf8))
    name = f"synthetic_province_seed_{warehouse.synthetic_seed}"
    frame = contract.concat_raw([contract.with_provenance(obs, name, "synthetic")])
    read = landing.Landing(raw=frame, schools=landing.latest_names(pl.DataFrame(schema=landing.SCHOOLS_SCHEMA)),
                           aggregates=pl.DataFrame(schema=landing.AGGREGATES_SCHEMA),
                           files=[{"file": name, "format": "synthetic province", "rows": frame.height}])
    return read, f"synthetic province (seed {warehouse.synthetic_seed})", synthetic.truth_frame(province.truth)


def landing_version(warehouse: WarehouseResource) -> str:
    """The landing folder's data version: its content fingerprint, or the synthetic seed when it is empty."""
    fingerprint = contract.landing_fingerprint(warehouse.get().raw_dir)
    return fingerprint or f"synthetic-province-seed-{warehouse.synthetic_seed}"


def landing_observation(warehouse: WarehouseResource) -> tuple[str, dict]:
    """Data version (content fingerprint) and per-file metadata of the landing folder."""
    wh = warehouse.get()
    fingerprint = contract.landing_fingerprint(wh.raw_dir)
    if fingerprint is None:  # the synthetic province stands in; its seed is its version
        return landing_version(warehouse), {"source": "synthetic province (raw/ is empty)"}
    files = landing.describe(wh.raw_dir)
    return fingerprint, {
        "source": f"landing files ({len(files)})", "fingerprint": fingerprint, "folder": dg.MetadataValue.path(str(wh.raw_dir)),
        "files": dg.MetadataValue.md(markdown(pl.DataFrame(files, infer_schema_length=None))),
    }


def what_was_read(read: landing.Landing) -> dict:
    """The raw_observations metadata that says what was read: files, formats, years, schools and
    what the publisher suppressed."""
    raw = read.raw
    flag = raw[contract.SUPPRESSED_FLAG].str.strip_chars() if contract.SUPPRESSED_FLAG in raw.columns else None
    suppressed = 0 if flag is None else int(((flag != "0") & flag.is_not_null()).sum())
    years = raw["year"].str.strip_chars().cast(pl.Int64, strict=False).drop_nulls()
    return {
        "formats": dg.MetadataValue.json(sorted({f["format"] for f in read.files})),
        "years": dg.MetadataValue.json(sorted(set(years.to_list()))),
        "schools": raw["school_id"].str.strip_chars().n_unique(),
        "school_subjects_suppressed_by_publisher": suppressed,
        "publisher_aggregate_rows": read.aggregates.height,
        "files_read": dg.MetadataValue.md(markdown(pl.DataFrame(read.files, infer_schema_length=None))),
        "kept_apart": dg.MetadataValue.json(read.kept_apart),
    }


# The AssetSpec form of observable_source_asset (which builds a SourceAsset, deprecated in 1.13), so
# the asset keeps its owners and kinds.
@dg.multi_observable_source_asset(specs=[dg.AssetSpec(
    "landing_files", group_name="ingest", owners=[OWNER], kinds={"csv", "parquet"},
    description="The landing folder warehouse/raw/ (CSV/Parquet files of the landing contract). Observing it "
    "records its data version, a SHA-256 over file names and contents (the synthetic seed when it is empty), "
    "so raw_observations shows as stale when new results land.",
)])
def landing_files(warehouse: WarehouseResource) -> dg.ObserveResult:
    """Dagster observes the landing folder: the UI's Observe button, or landing_observation_job (which
    new_results_sensor launches before production and comparison)."""
    version, metadata = landing_observation(warehouse)
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=metadata)


@dg.multi_asset(
    name="raw_observations",
    specs=[
        dg.AssetSpec("raw_observations", deps=["landing_files"],
                     description="Every landing row, as text, with its source file, row number and format. A school "
                     "row of a publisher's wide file (EQAO) is three rows here, one per subject.", **INGEST),
        dg.AssetSpec("synthetic_truth", deps=["landing_files"], skippable=True, description="True parameters of the "
                     "synthetic province (written only when raw/ is empty and the synthetic province stands in).", **INGEST),
        dg.AssetSpec("schools", deps=["landing_files"], description="One row per school the files "
                     "name (EQAO's files do): school_name, board_id, board_name, language, from its latest year. "
                     "Empty for data without names (the landing contract, the synthetic province).", **INGEST),
        dg.AssetSpec("publisher_aggregates", deps=["landing_files"], description="The publisher's own "
                     "province and board rows (EQAO OrgType P and B), by subject, as published: not observations, "
                     "kept out of the sample.", **INGEST),
    ],
    can_subset=True,
)
def raw_observations(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    wh = warehouse.get()
    try:
        read, source, truth = _landing(warehouse)
    except contract.LandingFileError as exc:
        raise dg.Failure(description=str(exc)) from exc
    except OSError as exc:
        raise dg.Failure(description=f"cannot read landing folder {exc.filename}: {exc.strerror}") from exc
    ignored = [contract.relative_name(p, wh.raw_dir) for p in contract.ignored_files(wh.raw_dir)]
    if ignored:
        context.log.warning(f"ignored non-landing files in raw/: {ignored}")
    for apart in read.kept_apart:
        context.log.warning(f"{apart['file']} {apart['why']}")
    frame = read.raw
    context.log.info(f"loaded {frame.height} rows from {source}")
    if truth is not None and "synthetic_truth" in selected:
        wh.write_table("synthetic_truth", truth)
        yield dg.MaterializeResult(asset_key="synthetic_truth", metadata=table_metadata(truth))
    if "schools" in selected:
        wh.write_table("schools", read.schools)
        yield dg.MaterializeResult(asset_key="schools", metadata=table_metadata(read.schools))
    if "publisher_aggregates" in selected:
        wh.write_table("publisher_aggregates", read.aggregates)
        yield dg.MaterializeResult(asset_key="publisher_aggregates", metadata=table_metadata(read.aggregates))
    if "raw_observations" not in selected:
        return
    wh.write_table("raw_observations", frame)
    yield dg.MaterializeResult(
        asset_key="raw_observations",
        metadata=table_metadata(frame) | what_was_read(read) | {
            "source": source,
            "landing_files_version": landing_version(warehouse),   # what it read, beside what was observed
            "files": dg.MetadataValue.json([f["file"] for f in read.files if truth is None]),
            "ignored_files": dg.MetadataValue.json(ignored),
        }
    )


@dg.multi_asset(
    name="rejected_observations",
    specs=[
        dg.AssetSpec("rejected_observations", deps=["raw_observations"],
                     description="Raw rows that break the landing contract, with a reason code and detail.", **INGEST),
        dg.AssetSpec("valid_observations", deps=["raw_observations"],
                     description="Typed rows that pass the landing contract, with derived columns.", **INGEST),
    ],
    can_subset=True,
)
def rejected_observations(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    wh = warehouse.get()
    raw = wh.read_table("raw_observations")
    valid, rejected = contract.validate(raw)
    if valid.height + rejected.height != raw.height:
        raise dg.Failure(f"validation lost rows: {raw.height} in, {valid.height} + {rejected.height} out")
    if "valid_observations" in selected:
        wh.write_table("valid_observations", valid)
        yield dg.MaterializeResult(asset_key="valid_observations", metadata=table_metadata(valid))
    if "rejected_observations" not in selected:
        return
    wh.write_table("rejected_observations", rejected)
    by_reason = rejected.group_by("reason").len().sort("reason") if rejected.height else pl.DataFrame()
    yield dg.MaterializeResult(
        asset_key="rejected_observations",
        metadata=table_metadata(rejected) | {
            "valid_rows": valid.height,
            "raw_rows": raw.height,
            "rejected_by_reason": dg.MetadataValue.md(markdown(by_reason)),
        }
    )


@dg.multi_asset(
    name="cleaned_observations",
    specs=[
        dg.AssetSpec("cleaned_observations", deps=["valid_observations"],
                     description="Valid observations with participation >= 0.50 from eligible schools, with model keys "
                     "year_subject, school_year_id (cohort) and school_subject_id (profile).", **INGEST),
        dg.AssetSpec("filtered_observations", deps=["valid_observations"],
                     description="Valid observations dropped by the filters, with a reason.", **INGEST),
    ],
    can_subset=True,
)
def cleaned_observations(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    selected = {k.to_user_string() for k in context.selected_asset_keys}
    wh = warehouse.get()
    cleaned, filtered = filters.clean(wh.read_table("valid_observations"))
    if "filtered_observations" in selected:
        wh.write_table("filtered_observations", filtered)
        yield dg.MaterializeResult(asset_key="filtered_observations", metadata=table_metadata(filtered))
    if "cleaned_observations" not in selected:
        return
    wh.write_table("cleaned_observations", cleaned)
    by_reason = filtered.group_by("reason").len().sort("reason") if filtered.height else pl.DataFrame()
    yield dg.MaterializeResult(
        asset_key="cleaned_observations",
        metadata=table_metadata(cleaned) | {"filtered_by_reason": dg.MetadataValue.md(markdown(by_reason))}
    )


def _check_result(passed: bool, rows: int, offending: pl.DataFrame, **extra) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=passed,
        metadata={
            "rows_checked": rows,
            "violations": offending.height,
            "examples": dg.MetadataValue.md(markdown(offending.head(5))),
            **extra,
        },
    )


@dg.asset_check(asset="cleaned_observations", blocking=True, description="No cleaned observation has participation < 0.50.")
def participation_at_least_half(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    cleaned = warehouse.get().read_table("cleaned_observations")
    bad = cleaned.filter(pl.col("participation") < filters.MIN_PARTICIPATION)
    return _check_result(bad.height == 0, cleaned.height, bad.select("school_id", "year", "subject", "participation"))


MODEL_COLUMNS = ("school_id", "year", "subject", "n_trials", "y_success", "year_subject", "school_year_id", "school_subject_id")


@dg.asset_check(
    asset="cleaned_observations", blocking=True,
    description="Keys (school_id, year, subject) unique, 0 <= y_success <= n_trials, no nulls in model columns.",
)
def model_columns_valid(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    cleaned = warehouse.get().read_table("cleaned_observations")
    dup = cleaned.filter(pl.struct(contract.KEY).is_duplicated())
    out_of_range = cleaned.filter((pl.col("y_success") < 0) | (pl.col("y_success") > pl.col("n_trials")))
    nulls = cleaned.filter(pl.any_horizontal(pl.col(MODEL_COLUMNS).is_null()))
    bad = pl.concat([f.select(contract.KEY) for f in (dup, out_of_range, nulls)])
    return _check_result(
        bad.height == 0, cleaned.height, bad,
        duplicate_keys=dup.height, out_of_range=out_of_range.height, null_rows=nulls.height,
    )


@dg.asset(
    deps=["cleaned_observations"],
    description="One row per eligible school: observation count, average n, years present.",
    **INGEST,
)
def eligible_schools(warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    table = filters.eligible_schools(wh.read_table("cleaned_observations"))
    wh.write_table("eligible_schools", table)
    return dg.MaterializeResult(metadata=table_metadata(table))


@dg.asset(
    deps=[eligible_schools],
    partitions_def=sample_partitions,
    description="Observations of the schools analysed: 'full' = every eligible school; 'subsample' = a stable, "
    "hash-ranked choice of 500 (configurable) eligible schools.",
    group_name="sample", owners=[OWNER], kinds={"duckdb", "polars"}, code_version=code_version_of(filters),
)
def analysis_sample(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    wh = warehouse.get()
    sample = filters.analysis_sample(
        wh.read_table("cleaned_observations"), context.partition_key,
        subsample_size=warehouse.subsample_size, seed=warehouse.subsample_seed,
    )
    wh.write_partition("analysis_sample", context.partition_key, sample)
    return dg.MaterializeResult(
        metadata=table_metadata(sample) | {"schools": sample["school_id"].n_unique()}
    )


@dg.asset_check(
    asset=analysis_sample, blocking=True, partitions_def=sample_partitions,
    description="Every school in the sample has >= 2 observations at participation >= 0.70.",
)
def sample_schools_eligible(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    sample = warehouse.get().read_partition("analysis_sample", _partition(context))
    counts = sample.group_by("school_id").agg(
        (pl.col("participation") >= filters.ELIGIBLE_PARTICIPATION).sum().alias("high_participation_obs")
    )
    bad = counts.filter(pl.col("high_participation_obs") < filters.MIN_ELIGIBLE_OBS)
    return _check_result(bad.height == 0, sample.height, bad, schools_checked=counts.height, partition=_partition(context))


@dg.asset_check(
    asset=analysis_sample, blocking=True, partitions_def=sample_partitions,
    description="The subsample has exactly the configured number of schools (all, when fewer are eligible).",
)
def sample_size_as_configured(context: dg.AssetCheckExecutionContext, warehouse: WarehouseResource) -> dg.AssetCheckResult:
    wh = warehouse.get()
    partition = _partition(context)
    schools = wh.read_partition("analysis_sample", partition)["school_id"].n_unique()
    eligible = wh.read_table("eligible_schools").height
    expected = eligible if partition == FULL else min(warehouse.subsample_size, eligible)
    return dg.AssetCheckResult(
        passed=schools == expected,
        metadata={"partition": partition, "schools": schools, "expected": expected, "eligible": eligible},
    )


def _partition(context: dg.AssetCheckExecutionContext) -> str:
    return context.op_execution_context.partition_key
