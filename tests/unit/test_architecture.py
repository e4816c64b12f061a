"""The layers of docs/architecture.md hold: arrows point down, and nothing imports in a circle."""

from __future__ import annotations

import subprocess
import sys

from scripts.import_graph import check
from switchboard.settings import REPO_ROOT


def test_no_upward_arrow_and_no_import_circle():
    graph, upward, module_cycles, tools_cycles = check(REPO_ROOT)
    assert upward == []
    assert module_cycles == []
    assert tools_cycles == []
    # the composition root is the only module below the doors that reads the settings
    readers = sorted(m for m, deps in graph.items() if "switchboard.settings" in deps and not m.startswith("tests"))
    assert all(m.startswith(("switchboard.", "bench.")) or m == "app" for m in readers), readers
    assert "switchboard.services" in readers


def test_the_checker_finds_an_upward_arrow_and_a_circle(tmp_path):
    """The check can fail: a tools module importing switchboard, and two modules importing each other."""
    for pkg in ("tools", "switchboard", "agents"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    (tmp_path / "switchboard" / "settings.py").write_text("")
    (tmp_path / "tools" / "a.py").write_text("def f():\n    from switchboard.settings import X\n")
    (tmp_path / "agents" / "x.py").write_text("from agents import y\n")
    (tmp_path / "agents" / "y.py").write_text("import agents.x\n")
    _, upward, module_cycles, _ = check(tmp_path)
    assert upward == ["tools.a -> switchboard.settings"]
    assert module_cycles == [["agents.x", "agents.y"]]
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "import_graph.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "upward arrows: 1" in proc.stdout
