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


def test_a_main_called_with_argv_records_those_arguments(monkeypatch):
  monkeypatch.setattr(sys, "argv", ["studies/x.py", "--from", "the", "shell"])
  text = results.header("t", argv=["--note", "two words"])
  assert "studies/x.py --note 'two words'\n" in text and "shell" not in text
