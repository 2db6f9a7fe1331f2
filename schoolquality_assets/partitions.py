"""The two model partitions: every eligible school (``full``) and a stable 500-school ``subsample``."""

import dagster as dg

FULL = "full"
SUBSAMPLE = "subsample"
PARTITIONS = (FULL, SUBSAMPLE)

sample_partitions = dg.StaticPartitionsDefinition(list(PARTITIONS))
