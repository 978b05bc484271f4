"""The one exception type that main.py turns into a one-line error and a non-zero exit."""

# How every error about a dataset that is neither on disk nor downloadable ends.
PREPARED_COPY = (
  'point --config.data.dir or TFDS_DATA_DIR at a tfds data directory with a prepared copy '
  '(an array_record copy needs no TensorFlow)'
)


class UserError(Exception):
  """A problem the user can fix (bad config, missing data, bad files), not a bug."""
