import dagster as dg
import polars as pl
import pytest

from schoolquality_assets.ingest import contract, filters, synthetic


def province_sample(province: synthetic.Province) -> pl.DataFrame:
    """Cleaned observations of a generated province (every eligible school)."""
    obs = province.observations.with_columns(pl.all().cast(pl.Utf8))
    raw = obs.with_columns(source_file=pl.lit("synthetic"), source_row=pl.int_range(1, obs.height + 1, dtype=pl.Int64))
    valid, _ = contract.validate(raw)
    cleaned, _ = filters.clean(valid)
    return cleaned


def checkpoints_up_to(n: int, min_draws: int = 50, check_every: int = 50, max_draws: int = 3000) -> list[int]:
    """The stop rule's checkpoints from ``min_draws`` up to the first at or past ``n``."""
    from schoolquality_assets.engine.base import StopRule

    rule = StopRule(judge=None, min_draws=min_draws, check_every=check_every, max_draws=max_draws)
    checkpoints = [min_draws]
    while checkpoints[-1] < n:
        checkpoints.append(rule.next_checkpoint(checkpoints[-1]))
    return checkpoints


@pytest.fixture(scope="session")
def small_province():
    province = synthetic.generate_province(seed=7, n_schools=160)
    return province, province_sample(province)


def failure_text(result: dg.ExecuteInProcessResult) -> str:
    """Every step failure's error message (and causes, and a Failure's description)."""
    parts = []
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        data = event.step_failure_data
        error = data.error
        while error is not None:
            parts.append(error.message)
            error = error.cause
        if data.user_failure_data is not None and data.user_failure_data.description:
            parts.append(data.user_failure_data.description)
    return "\n".join(parts)
