"""The error msjax raises for input it refuses; main turns it into one message and exit code 2."""


class InvalidInputError(ValueError):
  """A file, folder or manifest entry that msjax refuses; the message names it and the problem."""


class RunFailedError(InvalidInputError):
  """Every item of a run failed on its input; the workdir keeps the record of why (unlike a
  refusal before any work, whose new workdir is removed)."""
