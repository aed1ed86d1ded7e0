"""`python -m streams` is the `tripwire` command."""

import sys

from streams.operator._cli import main

sys.exit(main())
