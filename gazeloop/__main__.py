"""`python -m gazeloop` is the `gazeloop` command."""

import sys

from gazeloop.tools.cli import main

sys.exit(main())
