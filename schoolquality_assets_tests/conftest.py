import polars as pl
import pytest

from schoolquality_assets import contract, filters, synthetic


def province_sample(province: synthetic.Province) -> pl.DataFrame:
    """Cleaned observations of a generated province (every eligible school)."""
    obs = province.observations.with_columns(pl.all().cast(pl.Utf8))
    raw = obs.with_columns(source_file=pl.lit("synthetic"), source_row=pl.int_range(1, obs.height + 1, dtype=pl.Int64))
    valid, _ = contract.validate(raw)
    cleaned, _ = filters.clean(valid)
    return cleaned


@pytest.fixture(scope="session")
def small_province():
    province = synthetic.generate_province(seed=7, n_schools=160)
    return province, province_sample(province)
