"""Every `liverrt ...` line in the README and docs/ names a real command and real options (issue 18:
the README's commands must run verbatim; an option renamed or removed breaks this test, not a user)."""

import re
import shlex
from pathlib import Path

import click
import pytest

from liverrt.cli import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(text: str) -> list[str]:
    """`liverrt` lines of the bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            line = re.sub(r"^(torchrun .*? -m )liverrt", "liverrt", line)
            if line.startswith("liverrt "):
                lines.append(line)
            elif " && liverrt " in line:
                lines.append("liverrt " + line.split(" && liverrt ", 1)[1])
    return lines


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The click command a line names, and the rest of its words."""
    ctx = click.Context(cli)
    command: click.Command = cli
    rest = words
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        names = rest[0].split("|")  # `train unet|maskrcnn|dncnn-sr` names several
        sub = command.get_command(ctx, names[0])
        assert sub is not None, f"no command {rest[0]!r}"
        for other in names[1:]:
            assert command.get_command(ctx, other) is not None, f"no command {other!r}"
        command, rest = sub, rest[1:]
    return command, rest


def options_of(command: click.Command) -> set[str]:
    return {o for p in command.params for o in (*p.opts, *p.secondary_opts)} | {"-h", "--help"}


CASES = [(page.name, line) for page in PAGES for line in command_lines(page.read_text(encoding="utf-8"))]


def test_the_pages_have_commands_to_check():
    readme = [line for name, line in CASES if name == "README.md"]
    assert len(readme) >= 15 and any(line.startswith("liverrt infer -i") for line in readme)


@pytest.mark.parametrize(("page", "line"), CASES)
def test_every_documented_command_and_option_exists(page, line):
    words = shlex.split(line.replace("[", " ").replace("]", " "))[1:]
    while words and words[0] in ("-v", "-vv", "-q"):
        words = words[1:]
    command, rest = resolve(words)
    known = options_of(command)
    for word in rest:
        if word.startswith("-") and not word.lstrip("-").isdigit():
            for option in word.split("|"):
                option = option.split("=")[0]
                assert option in known, f"{page}: `{line}`: {command.name} has no option {option}"
