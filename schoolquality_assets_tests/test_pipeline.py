"""End to end with materialize(): a small province through the data, model and analysis assets."""

import base64
import html as html_lib
import json
import re

import dagster as dg
import polars as pl
import pyarrow.parquet as pq
import pytest

from schoolquality_assets.analyses import loo, report
from schoolquality_assets.definitions import ASSETS, CHECKS
from schoolquality_assets.defs.resources import (
    ConvergenceResource,
    SamplerResource,
    WarehouseResource,
)
from schoolquality_assets.ingest import synthetic
from schoolquality_assets.warehouse import Warehouse

from .conftest import failure_text

pytestmark = pytest.mark.stan


def _resources(root, warmup=300, **sampler):
    return {
        "warehouse": WarehouseResource(root=str(root), subsample_size=25),
        # every posterior samples until the default gate holds (R-hat <= 1.01, ESS >= 400)
        "sampler": SamplerResource(chains=4, warmup=warmup, seed=11, **sampler),
        "convergence": ConvergenceResource(),
    }


def _assets():
    return [*ASSETS, *CHECKS]


@pytest.fixture(scope="module")
def small_province(tmp_path_factory):
    root = tmp_path_factory.mktemp("warehouse")
    province = synthetic.generate_province(seed=5, n_schools=45)
    synthetic.write_province(province, root / "raw")
    return root


def test_comparison_pipeline_on_subsample(small_province):
    result = dg.materialize(_assets(), resources=_resources(small_province), partition_key="subsample",
                            selection=dg.AssetSelection.groups("ingest", "sample", "models", "analyses", "report"))
    assert result.success
    wh = Warehouse.from_env(small_province)
    sample = wh.read_table("analysis_sample")
    assert sample["school_id"].n_unique() == 25
    html = (wh.reports_dir / "subsample" / "index.html").read_text()
    for section in ("Why the binomial likelihood matters", "Shrinkage", "Variance decomposition", "School SD by model",
                    "School random effects", "Model comparison (LOO-CV)", "MCMC diagnostics",
                    "Comparison with frequentist approach", "Posterior predictive checks", "Held-out year"):
        assert f"<h2>{html_lib.escape(section)}</h2>" in html, section
    for table in ("shrinkage_by_band", "variance_components", "school_sd_by_model", "loo_comparison",
                  "mcmc_diagnostics", "frequentist_comparison", "posterior_predictive_checks", "holdout_validation"):
        assert _report_cells(html, table) == _duckdb_cells(wh, table), table
    assert html.count(f"Note: {loo.M0_NOTE}.") == 1  # the LOO note once, under its table
    assert "<figcaption><strong>Trace plot, M2 SDs.</strong>" in html and "shrinkage_arrows" not in html
    for model in ("m0", "m1", "m2", "m3"):  # brms-style summary of every posterior
        assert f'<table id="table-posterior-summary-{model}">' in html, model
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(images) >= 5
    assert all(base64.b64decode(i)[:8] == b"\x89PNG\r\n\x1a\n" for i in images)
    assert "next year's results fell inside the 90% interval for" in html_lib.unescape(html)
    assert set(wh.read_partition("posterior_predictive_checks", "subsample")["model"]) == {"M0", "M1", "M2", "M3"}
    assert wh.read_partition("holdout_validation", "subsample")["heldout_year"].unique().to_list() == [sample["year"].max()]
    evals = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()}
    assert evals[("cleaned_observations", "participation_at_least_half")]
    assert evals[("analysis_sample", "sample_schools_eligible")]
    assert ("posterior_predictive_checks", "ppc_p_values") in evals and ("holdout_validation", "holdout_fits_converged") in evals
    for model in ("m0", "m1", "m2", "m3"):
        assert evals[(f"posterior_{model}", "rhat")], model
        assert evals[(f"posterior_{model}", "no_divergences")], model


def test_a_failed_m3_does_not_stop_productions_steps(small_province):
    """M3's latest fit failed (its draws beside the passed posterior): the steps production runs
    without fitting M3 still build. The tables that compare models leave M3 out, the report says
    the fit failed first, and nothing built from M3 (or its fit before) is shown."""
    wh = Warehouse.from_env(small_province)
    everything = dg.AssetSelection.groups("ingest", "sample", "models", "analyses", "report")
    if not all(wh.posterior_path(k, "subsample").exists() for k in ("m0", "m1", "m2", "m3")):
        assert dg.materialize(_assets(), resources=_resources(small_province), partition_key="subsample",
                              selection=everything).success
    failed = wh.failed_posterior_path("m3", "subsample")
    failed.write_bytes(wh.posterior_path("m3", "subsample").read_bytes())   # stands for a failed fit's draws
    try:
        result = dg.materialize(_assets(), resources=_resources(small_province), partition_key="subsample",
                                selection=dg.AssetSelection.assets("school_sd_by_model", "mcmc_diagnostics", "report"),
                                raise_on_error=False)
        assert result.success, failure_text(result)
        assert "M3" not in wh.read_partition("school_sd_by_model", "subsample")["model"].to_list()
        assert "M3" not in wh.read_partition("mcmc_diagnostics", "subsample")["model"].to_list()
        assert set(wh.read_partition("mcmc_diagnostics", "subsample")["model"]) == {"M0", "M1", "M2"}
        html = html_lib.unescape(wh.report_path("subsample").read_text())
        assert f"The latest fit of M3 on subsample failed its convergence gate (failed draws: {failed})" in html
        assert ("Not shown: variance_components was built from an earlier M3 fit, and the latest M3 fit on "
                "subsample failed its convergence gate") in html
        assert 'id="table-variance-components"' not in html and 'id="table-posterior-summary-m3"' not in html
        assert 'id="table-school-sd-by-model"' in html and 'id="table-posterior-summary-m2"' in html
        meta = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "report"]
        assert meta[0].materialization.metadata["failed_fits"].value == {"M3": str(failed)}
    finally:
        failed.unlink()


def test_budget_too_short_fails_cleanly_and_blocks_production(small_province):
    """A fit whose time budget runs out before the gate holds fails with where it stood; the
    previous posterior, the tables and the output stay byte-identical, and nothing downstream
    builds from the failed fit, even materialized on its own."""
    wh = Warehouse.from_env(small_province)
    upstream = dg.AssetSelection.groups("ingest") | dg.AssetSelection.assets("analysis_sample")
    good = dg.materialize(_assets(), resources=_resources(small_province), partition_key="subsample",
                          selection=upstream | dg.AssetSelection.assets("posterior_m2", "g3_school_quality"))
    assert good.success
    gate = json.loads(pq.read_schema(wh.output_path("subsample")).metadata[b"gate_thresholds"])
    assert gate["min_ess"] == 400 and gate["max_rhat"] == 1.01 and gate["ranking_mcse_limit"] == 0.025
    quality = pl.read_parquet(wh.output_path("subsample"))
    assert quality.columns[:5] == ["school_id", "school_name", "board_id", "board_name", "language"]
    assert quality["school_name"].null_count() == quality.height      # the synthetic province names no school
    assert quality["near_cut"].dtype == pl.Boolean
    files = [wh.posterior_path("m2", "subsample"), wh.output_path("subsample"), wh.database]
    before = [f.read_bytes() for f in files]

    res = _resources(small_province, warmup=20000, budget_seconds=3, min_draws=50, check_every=50)
    target = dg.AssetSelection.assets("posterior_m2", "g3_school_quality")
    result = dg.materialize(_assets(), resources=res, partition_key="subsample", selection=target, raise_on_error=False)
    assert not result.success
    failure = failure_text(result)
    assert "time budget of 3 s ran out" in failure
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert not materialized
    assert [f.read_bytes() for f in files] == before

    # a fit that ends with a failed gate keeps its draws beside the passed posterior ...
    res = _resources(small_province, warmup=300, min_draws=20, check_every=20, max_draws=20)
    result = dg.materialize(_assets(), resources=res, partition_key="subsample",
                            selection=dg.AssetSelection.assets("posterior_m2"), raise_on_error=False)
    assert not result.success and wh.failed_posterior_path("m2", "subsample").exists()
    assert [f.read_bytes() for f in files] == before
    # ... its checks are recorded as failed, with the numbers behind them, and no materialization
    assert not result.get_asset_materialization_events()
    evals = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert {"rhat", "ess", "no_divergences", "bfmi", "max_treedepth"} <= set(evals)
    assert not evals["ess"].passed and evals["ess"].partition == "subsample"
    ess = evals["ess"].metadata
    assert ess["min_ess_bulk"].value < 400 and ess["parameters_failing"].value > 0 and ess["worst"].value
    assert ess["failed_draws"].value == str(wh.failed_posterior_path("m2", "subsample"))
    assert ess["judged"].value == "failed fit (not published)"
    assert "max_rhat" in evals["rhat"].metadata
    # ... and every consumer refuses it, saying which check failed and where the draws are
    for asset in ("g3_school_quality", "variance_components"):
        alone = dg.materialize(_assets(), resources=_resources(small_province), partition_key="subsample",
                               selection=dg.AssetSelection.assets(asset), raise_on_error=False)
        assert not alone.success
        text = failure_text(alone)
        assert "failed its convergence gate" in text and "posterior_m2.FAILED.nc" in text, text
    assert [f.read_bytes() for f in files] == before


def _report_cells(html: str, table: str) -> list[str]:
    body = re.search(rf'<table id="table-{table.replace("_", "-")}"[^>]*>(.*?)</table>', html, re.S).group(1)
    return [html_lib.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", body)]


def _duckdb_cells(wh: Warehouse, table: str) -> list[str]:
    """The stored values through the report's display formatter (3 significant digits, % signs; the
    tables keep full precision), in the report's layout: a note column is said once below the table
    instead of in the cells, and TRANSPOSED tables show one row per column."""
    frame = wh.read_partition(table, "subsample").drop("note", strict=False)
    if table in report.TRANSPOSED:
        key = report.TRANSPOSED[table]
        return [report.display_cell(c, v) for c in frame.columns if c != key for v in frame[c]]
    return [report.display_cell(c, v) for row in frame.iter_rows() for c, v in zip(frame.columns, row)]
