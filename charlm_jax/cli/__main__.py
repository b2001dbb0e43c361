"""``python -m charlm_jax.cli``: the same as the ``charlm-jax`` command."""

import sys

from charlm_jax.cli.app import main

sys.exit(main())
