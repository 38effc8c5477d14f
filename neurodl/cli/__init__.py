"""Command-line interface: a thin Typer adapter over the library.

Modules here import only typer, rich and the standard library at import time,
so that ``neurodl --help`` answers instantly; each command imports what it
needs (torch, monai, pandas) inside its body.
"""
