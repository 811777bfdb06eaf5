"""A run's records and their keeping: the path layer (``storage``), the work-directory lock,
checkpoints, metric logs, the run's identity across sessions, stopping on a signal, progress
lines, and reading runs back (``table``, ``plots``)."""
