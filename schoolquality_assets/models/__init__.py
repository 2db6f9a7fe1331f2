"""The page's models: specs, design, fitting, convergence diagnostics and gate, calibration (SBC). No Dagster."""
