"""neurodl: deep learning for brain imaging from the command line."""

__version__ = "0.1.0"
