"""TODO(helper): replaced by the real command."""


def check() -> None:
    """Not built yet."""
    raise NotImplementedError
