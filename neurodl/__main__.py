"""Entry point for ``python -m neurodl`` (and ``torchrun -m neurodl``)."""

import sys

from neurodl.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
