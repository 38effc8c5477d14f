"""Plots (matplotlib, Agg backend) and per-run summaries."""
