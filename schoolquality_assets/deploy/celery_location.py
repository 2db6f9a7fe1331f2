"""The code location on Celery: the same assets, checks, jobs, schedules, sensors and resources as
``schoolquality_assets.definitions``, with every step a Celery task (dagster-celery, install with
``pip install 'schoolquality[celery]'``).

Run it with an instance whose config is ``celery_dagster.yaml`` (beside this file): its pool limit
keeps the Stan steps one at a time, whichever worker takes them. The broker and result backend
are read when a run starts, from SCHOOLQUALITY_CELERY_BROKER and SCHOOLQUALITY_CELERY_BACKEND
(e.g. redis://127.0.0.1:6379/0 and redis://127.0.0.1:6379/1); the workers read the same from
``celery_worker.yaml``::

    dagster-celery worker start -A dagster_celery.app -y schoolquality_assets/deploy/celery_worker.yaml \\
        -q dagster -n worker1 -- --concurrency=1
    dagster job execute -m schoolquality_assets.deploy.celery_location -j comparison_job \\
        --tags '{"dagster/partition": "subsample"}'
"""

import dagster as dg
from dagster_celery import celery_executor

from schoolquality_assets import definitions

CELERY_EXECUTOR = celery_executor.configured(
    {"broker": {"env": "SCHOOLQUALITY_CELERY_BROKER"}, "backend": {"env": "SCHOOLQUALITY_CELERY_BACKEND"}},
    name="schoolquality_celery",
)


def on_celery(base: dg.Definitions) -> dg.Definitions:
    """``base`` with the Celery executor."""
    return dg.Definitions(assets=base.assets, asset_checks=base.asset_checks, jobs=base.jobs, schedules=base.schedules,
                          sensors=base.sensors, resources=base.resources, loggers=base.loggers, executor=CELERY_EXECUTOR)


defs = on_celery(definitions.defs)
