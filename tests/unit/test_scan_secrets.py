"""The committed-secrets scan: it fails on a key in any text file, names where without printing
the key, honours the allow marker, and skips binaries and virtual environments.

Fake keys are built at run time so this file itself passes the scan.
"""

from __future__ import annotations

from pathlib import Path

from scripts.scan_secrets import ALLOW_MARKER, main, mask, scan, scan_text

OPENAI_KEY = "sk-" + "x" * 40
GITHUB_TOKEN = "ghp_" + "A1b2C3d4E5" * 4
AWS_KEY = "AKIA" + "Q" * 16


def _tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return root


def test_hits_name_file_line_and_kind_but_not_the_key():
    text = f"first line\nOPENAI_API_KEY={OPENAI_KEY}\nheaders = {{'Authorization': 'Bearer {'t0k3n' * 5}'}}\n"
    hits = scan_text(text, "cfg/settings.env")
    assert [(h.path, h.line, h.kind) for h in hits] == [
        ("cfg/settings.env", 2, "openai_key"),
        ("cfg/settings.env", 3, "bearer_token"),
    ]
    assert str(hits[0]) == "cfg/settings.env:2: openai_key (sk-x… 43 chars)"
    assert all(OPENAI_KEY not in str(h) and "t0k3nt0k3n" not in str(h) for h in hits)


def test_mask_shows_only_a_prefix_and_the_length():
    assert mask(GITHUB_TOKEN) == f"ghp_… {len(GITHUB_TOKEN)} chars"


def test_allow_marker_exempts_only_its_own_line():
    text = f"key = '{AWS_KEY}'  # {ALLOW_MARKER}\nkey2 = '{AWS_KEY}'\n"
    assert [(h.line, h.kind) for h in scan_text(text, "t.py")] == [(2, "aws_access_key")]


def test_scan_walks_a_tree_and_skips_binaries_and_virtualenvs(tmp_path):
    _tree(tmp_path, {
        "tests/cassettes/c.yaml": f"content: |-\n  use {GITHUB_TOKEN}\n",
        "logs/fixture.log": "INFO nothing to see\n",
        "image.png": b"\x89PNG\0\0" + OPENAI_KEY.encode(),
        ".venv/lib/site.py": f"KEY = '{OPENAI_KEY}'\n",
    })
    hits, scanned = scan(tmp_path)  # tmp_path is not a git checkout: the tree is walked
    assert [(h.path, h.line, h.kind) for h in hits] == [("tests/cassettes/c.yaml", 2, "github_token")]
    assert scanned == 2  # the cassette and the log; not the binary, not .venv


def test_exit_status_is_1_with_a_hit_and_0_without(tmp_path, capsys):
    clean = _tree(tmp_path / "clean", {"README.md": "Authorization: Bearer <key>\napi_key = settings.key\n"})
    assert main([str(clean)]) == 0
    dirty = _tree(tmp_path / "dirty", {"app.py": f'client = OpenAI(api_key="{OPENAI_KEY}")\n'})
    assert main([str(dirty)]) == 1
    out = capsys.readouterr()
    assert "app.py:1: openai_key" in out.out and OPENAI_KEY not in out.out + out.err
