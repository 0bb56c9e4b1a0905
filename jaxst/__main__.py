"""``python -m jaxst``: the ``jaxst`` command line."""

import sys

from jaxst.cli import main

if __name__ == "__main__":
    sys.exit(main())
