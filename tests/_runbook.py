"""The commands of a docs/runbook.md procedure, for the tests that run them as written."""

import re
import shlex
from pathlib import Path

RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"


def runbook_commands(section: str, *, level: str = "##", comment: str = "#") -> list:
    """argv lists of every line of the ``sh`` blocks under the heading ``section`` (up to
    the next ``## `` heading), with ``comment`` and what follows it cut off."""
    text = RUNBOOK.read_text(encoding="utf-8")
    body = text.split(f"{level} {section}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", body, re.S):
        for line in block.splitlines():
            line = line.split(comment, 1)[0].strip()
            if line:
                commands.append(shlex.split(line))
    return commands
