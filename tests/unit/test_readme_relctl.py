"""The README's operator section lists exactly the commands relctl has, and says errors as relctl prints them."""
from __future__ import annotations

import json
import re
from pathlib import Path

from shared.ui.cli import build_parser, describe_error
from shared.ui.cli_context import EXIT_TIMEOUT, CommandFailed

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def command_block() -> str:
    section = README[README.index("## Operating releases"):]
    return section[section.index("```"):section.index("```", section.index("```") + 3)]


def test_the_command_block_lists_every_command_and_no_other():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    listed = set(re.findall(r"^relctl ([a-z-]+)", command_block(), re.M))
    assert listed == set(sub.choices), (set(sub.choices) - listed, listed - set(sub.choices))


def test_errors_are_plain_in_json_and_prefixed_once_in_text():
    message, code = describe_error(CommandFailed("release r still running after 1s", EXIT_TIMEOUT))
    assert (message, code) == ("release r still running after 1s", 3)
    assert "relctl: error: release example-sample-app-6e06dbb785ea is succeeded; nothing to cancel" in README
    assert '`{"error": …, "exit": …}`' in README
    assert json.loads(json.dumps({"error": message, "exit": code}))["error"].startswith("release")
