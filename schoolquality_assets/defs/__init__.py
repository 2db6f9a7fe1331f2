"""The Dagster wiring: assets and their checks per domain, jobs, schedule and sensors, resources."""
