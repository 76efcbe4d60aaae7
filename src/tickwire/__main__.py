"""``python -m tickwire``: the ``tickwire`` command.

Imports: tickwire.cli.
"""

import sys

from tickwire.cli import main

sys.exit(main())
