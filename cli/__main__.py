"""``python -m cli``: the same as the ``gpujobs`` command."""

import sys

from cli import main

sys.exit(main())
