"""TODO(helper): replaced by the real command."""


def info() -> None:
    """Not built yet."""
    raise NotImplementedError
