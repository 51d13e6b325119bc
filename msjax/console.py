"""The console msjax writes to: absl logging at INFO, plain lines by default."""
import contextlib
import time

_plain = True


def is_plain() -> bool:
  """Whether this process's console is plain (what a worker process is set up with)."""
  return _plain


def setup(plain: bool = True):
  """Progress at INFO; with `plain`, log lines as people read them: the message, with
  'warning:' / 'error:' where it is one (absl's prefixes only under -v 1). Also what a worker
  process calls first, so that its progress reaches the same console."""
  import logging as py_logging

  from absl import logging

  class Plain(py_logging.Formatter):
    def format(self, record):
      text = record.getMessage()
      if record.levelno >= py_logging.ERROR:
        return "error: " + text
      return ("warning: " + text) if record.levelno >= py_logging.WARNING else text

  global _plain
  _plain = plain
  logging.use_absl_handler()  # in a worker process too (absl's app.run does it in the main one)
  logging.set_verbosity(logging.INFO)
  if plain:
    logging.get_absl_handler().setFormatter(Plain())


class Phases:
  """Each phase of a repeated job (an exam's network, outputs, report) said when it starts, with
  what it took the last time: a user sees where the time goes and what is left, instead of a
  minute of silence."""

  def __init__(self, prefix: str):
    self.prefix, self.last = prefix, {}

  @contextlib.contextmanager
  def __call__(self, item: str, phase: str, detail: str = ""):
    from absl import logging
    took = self.last.get(phase)
    logging.info("%s %s: %s%s%s", self.prefix, item, phase, f" ({detail})" if detail else "",
                 f", ~{took:.0f} s as on the last one" if took is not None else "")
    t = time.time()
    yield
    self.last[phase] = time.time() - t
