"""TODO(helper): replaced by the real command."""


def sample_data() -> None:
    """Not built yet."""
    raise NotImplementedError
