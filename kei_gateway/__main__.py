"""``python -m kei_gateway``: the same as the ``kei-gateway`` command."""

import sys

from kei_gateway.cli.main import main

sys.exit(main())
