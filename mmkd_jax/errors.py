"""The two mistakes a user's config can make, as exceptions: the command line reports either in
one line and exits with code 2 (``mmkd_jax.main``)."""


class ConfigError(ValueError):
  """A config field is invalid; the message names the field and what would be valid."""


class UnknownNameError(ValueError):
  """A config names something no module registered; the message lists what is known."""
