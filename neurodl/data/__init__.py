"""Datasets, transform pipelines, splits and the synthetic phantom cohort."""
