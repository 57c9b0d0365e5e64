"""`python -m shadowdiff` is the `shadowdiff` command."""

import sys

from shadowdiff.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
