"""Tasks: model, loss, metrics, pre/post-processing per task; the engine runs them."""
