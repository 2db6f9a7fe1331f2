"""Every asset and asset check of the code location, in one list each (definitions.py serves them;
orchestration.py resolves selections on them)."""

import dagster as dg

from schoolquality_assets.defs import analyses, ingest, posteriors, production, report, validation

ASSETS = [*dg.load_assets_from_modules([ingest, analyses, validation, production, report]), *posteriors.posterior_assets]
CHECKS = dg.load_asset_checks_from_modules([ingest])
