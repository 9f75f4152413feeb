"""The README a new user reads first: its two set-up commands come first, and its command table lists
every command the CLI has."""

from __future__ import annotations

import re

from agent.cli import COMMANDS
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_make_demo_and_make_test_are_the_first_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, flags=re.S).group(1)
    assert [line.split("#")[0].strip() for line in first_block.splitlines() if line.startswith("make")] == \
        ["make demo", "make test"]


def test_the_command_table_lists_every_command():
    listed = set(re.findall(r"^\| `boxtel ([a-z-]+)", README, flags=re.M))
    assert listed == set(COMMANDS)


def test_the_readme_points_the_diagnostics_at_the_demo():
    import tomllib

    port = tomllib.loads((ROOT / "config" / "simulate.toml").read_text())["mqtt"]["port"]
    assert "boxtel status -c config/simulate.toml" in README
    assert f"boxtel fleet --broker mqtt://127.0.0.1:{port}" in README and "make demo RAW=1" in README
