"""``python -m mmkd_jax.runs DIR ...``: the runs table (``mmkd-jax runs``)."""

import sys

from mmkd_jax.runs import table

sys.exit(table.main())
