"""Kubernetes deployment files (see README, Deployment)."""
