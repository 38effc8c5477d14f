"""TODO(helper): replaced by the real command."""


def models() -> None:
    """Not built yet."""
    raise NotImplementedError
