"""``python -m mmkd_jax.verify``."""

import sys

from mmkd_jax.verify import main

sys.exit(main())
