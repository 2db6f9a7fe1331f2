"""Deployment configurations of the code location (see celery_location.py for Celery)."""
