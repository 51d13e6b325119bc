"""studies/results.py: the command in a results file's header runs again as it is written."""
import shlex
import sys

from studies import results


def test_the_header_command_quotes_arguments_with_spaces_and_quotes(monkeypatch):
  argv = ["studies/x.py", "--title", "Issue 37's levers", "--note", "a; b (c) 'd' x×0.1"]
  monkeypatch.setattr(sys, "argv", argv)
  text = results.header("t")
  command = text.split("```\n", 1)[1].split("\n```", 1)[0]
  assert shlex.split(command)[1:] == argv
