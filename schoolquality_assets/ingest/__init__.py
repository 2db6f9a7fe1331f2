"""Landing files in, validated and filtered observations out: the landing contract, the EQAO reader,
the filters and the synthetic province. No Dagster."""
