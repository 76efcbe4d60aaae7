"""``python -m tickwire``: the ``tickwire`` command.

Imports: tickwire.cli.
"""

import sys

from tickwire.cli import main

if __name__ == "__main__":
    sys.exit(main())
