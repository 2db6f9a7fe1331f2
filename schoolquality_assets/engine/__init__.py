"""Sampling: the run-length rule and shared types, the nutpie engine (default), PyStan and cmdstanpy,
and the hand-written densities of the Stan programs. No Dagster."""
