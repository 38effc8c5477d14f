"""Model registry: ``create_model(task, name, **kwargs)``, ``list_models(task)``.

Importing this package registers every model (it imports torch).
"""

from neurodl.models import autoencoders, classifiers, generators, segmenters, tabular, translators  # noqa: F401  (importing registers the models)
from neurodl.models._registry import ModelEntry, create_model, list_models, register_model

__all__ = ["ModelEntry", "create_model", "list_models", "register_model"]
