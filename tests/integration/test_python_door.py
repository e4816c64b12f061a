"""The Python door as the README shows it: its runnable snippets are executed verbatim.

Only the models are swapped for scripted fakes (the snippets build their own ``Services`` from
``Settings()``), so a README example that no longer runs, or no longer answers, fails here.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from switchboard.settings import REPO_ROOT
from tests.stacks import scripted_services


def brazil_aware_sql(messages: list[Any]) -> str:
    if "Brazil" in str(messages[-1].content):
        return "SQL: SELECT COUNT(*) FROM Customer WHERE Country = 'Brazil'\nANSWER: {result} customers are from Brazil."
    return "SQL: SELECT COUNT(*) FROM Customer\nANSWER: We have {result} customers."


def readme_python_snippets() -> list[str]:
    """The runnable Python blocks of the README's "Embed it" section (those that call asyncio.run)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Embed it", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    return [b for b in blocks if "asyncio.run(main())" in b]


@pytest.fixture
def scripted_everywhere(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """Settings() from the environment point at tmp_path; every Services gets scripted models."""
    monkeypatch.setenv("SWITCHBOARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)  # no stray .env

    def make_services(settings):
        return scripted_services(settings, sql=brazil_aware_sql)[0]

    monkeypatch.setattr("switchboard.api.Services", make_services)
    monkeypatch.setattr("switchboard.services.Services", make_services)  # what the second snippet imports


def test_the_readme_has_both_python_examples() -> None:
    snippets = readme_python_snippets()
    assert len(snippets) == 2
    assert "Switchboard.open()" in snippets[0] and "build_support_graph(Services(settings), checkpointer=saver)" in snippets[1]


@pytest.mark.parametrize(("index", "printed"), [(0, "5 customers are from Brazil. 0.0"), (1, "We have 59 customers.")])
def test_readme_snippet_runs_as_written(scripted_everywhere, capsys: pytest.CaptureFixture[str], tmp_path,
                                        index: int, printed: str) -> None:
    exec(compile(readme_python_snippets()[index], f"README.md snippet {index}", "exec"), {"__name__": "__main__"})
    assert capsys.readouterr().out.strip() == printed
    assert (tmp_path / "data" / "checkpoints.sqlite").exists()   # the conversation was persisted
