"""The error msjax raises for input it refuses; main turns it into one message and exit code 2."""


class InvalidInputError(ValueError):
  """A file, folder or manifest entry that msjax refuses; the message names it and the problem."""
