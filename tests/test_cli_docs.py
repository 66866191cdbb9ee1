"""docs/cli.md is current, and every command documents itself: --help with an example, a
section in docs/cli.md and one in README.md."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "cli.md"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    """scripts/gen_cli_docs.py, loaded from its file."""
    spec = importlib.util.spec_from_file_location(
        "gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def helps(gen: ModuleType) -> dict[str, str]:
    """--help text of each command, by name."""
    return dict(gen.helps()[1:])


def test_docs_are_current(gen: ModuleType) -> None:
    assert DOC.read_text(encoding="utf-8") == gen.render(), gen.STALE


def test_every_command_has_help_with_an_example_and_a_docs_section(helps: dict[str, str]) -> None:
    assert {"train", "ls", "verify"} <= set(helps)
    no_example = [
        name
        for name, text in helps.items()
        if not any(line.strip().startswith("Example:") for line in text.splitlines())
    ]
    assert not no_example, f"--help without an 'Example:' line: {no_example}"
    doc = DOC.read_text(encoding="utf-8").splitlines()
    missing = [name for name in helps if f"## bnnctl {name}" not in doc]
    assert not missing, f"docs/cli.md has no section for: {missing}"


def test_every_command_has_a_readme_section(helps: dict[str, str]) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in helps if f"### `bnnctl {name}`" not in readme]
    assert not missing, f"README.md has no '### `bnnctl <name>`' section for: {missing}"
