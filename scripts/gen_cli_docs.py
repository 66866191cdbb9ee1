"""Generate docs/cli.md, the CLI reference, from the commands' own --help text.

Help is rendered at a fixed width of 100 columns with click's plain formatter (the app has
rich_markup_mode=None), so the file does not depend on the terminal it is generated in.

    python scripts/gen_cli_docs.py          # write docs/cli.md
    python scripts/gen_cli_docs.py --check  # exit 1 if docs/cli.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import typer

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"
WIDTH = 100
STALE = "docs/cli.md is stale: run python scripts/gen_cli_docs.py"


def app() -> typer.Typer:
    """The bnnctl Typer app, with every command registered."""
    import bnnctl.cli

    return getattr(bnnctl.cli, "app", None) or bnnctl.cli.common.app


def helps() -> list[tuple[str, str]]:
    """(name, --help text) of the root (name "") and of each visible command, in app order."""
    # typer.Context is click's Context (recent typer vendors its own click, so not `click.Context`).
    group = typer.main.get_command(app())
    root = typer.Context(group, info_name="bnnctl", terminal_width=WIDTH, max_content_width=WIDTH)
    out = [("", group.get_help(root))]
    for name in group.list_commands(root):
        cmd = group.get_command(root, name)
        if cmd is not None and not cmd.hidden:
            out.append((name, cmd.get_help(typer.Context(cmd, info_name=name, parent=root))))
    for name, text in out:
        if "\x1b" in text:
            raise RuntimeError(f"ANSI escapes in the help of {name or 'bnnctl'}: rich is on")
    return out


def render() -> str:
    """The whole of docs/cli.md."""
    (_, root), *commands = helps()
    parts = [
        "# bnnctl command reference\n",
        "Generated from each command's `--help` by `python scripts/gen_cli_docs.py`; "
        "do not edit by hand.\n",
        f"```text\n{root.rstrip()}\n```\n",
    ]
    parts += [f"## bnnctl {name}\n\n```text\n{text.rstrip()}\n```\n" for name, text in commands]
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md is stale")
    args = ap.parse_args()
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text(encoding="utf-8") != text:
            sys.exit(STALE)
        return
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text, encoding="utf-8", newline="\n")
    print(f"wrote {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
