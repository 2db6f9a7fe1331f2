"""The two model partitions: every eligible school (``full``) and a stable 500-school ``subsample``
(Dagster's partitions definition of them is defs/partitions.py)."""

FULL = "full"
SUBSAMPLE = "subsample"
PARTITIONS = (FULL, SUBSAMPLE)
