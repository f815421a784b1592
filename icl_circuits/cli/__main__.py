"""``python -m icl_circuits.cli``: the ``icl-circuits`` command."""

import sys

from icl_circuits.cli.main import main

sys.exit(main())
