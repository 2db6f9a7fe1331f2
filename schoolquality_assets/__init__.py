"""schoolquality: uncertainty-aware school quality estimates (Dagster + Stan)."""
