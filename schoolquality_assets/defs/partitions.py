"""The partitions of the sample, the posteriors and everything built from them."""

import warnings

import dagster as dg

from schoolquality_assets.partitions import PARTITIONS

sample_partitions = dg.StaticPartitionsDefinition(list(PARTITIONS))

# Checks are partitioned like their assets (AssetCheckSpec / @asset_check partitions_def), so each
# evaluation belongs to the partition it judged and the UI shows the status per partition. Dagster
# 1.13 marks that as a preview; dagster is pinned (pyproject.toml), so the warning, printed at
# every load of the code location, is silenced here and the tests cover the behaviour.
warnings.filterwarnings("ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning)
