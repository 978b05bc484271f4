"""The one exception type that main.py turns into a one-line error and a non-zero exit."""


class UserError(Exception):
  """A problem the user can fix (bad config, missing data, bad files), not a bug."""
