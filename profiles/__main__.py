"""``python -m profiles``: the same as the ``profiles`` command."""

import sys

from profiles.cli.main import main

sys.exit(main())
