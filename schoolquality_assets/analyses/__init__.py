"""The page's tables and figures, LOO, school rankings and the HTML report. No Dagster."""
