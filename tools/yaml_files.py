"""Small YAML files a person writes (a business profile, the settings ``switchboard init`` wrote):
read bounded, as UTF-8, with an error that names the file and what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_small_yaml(path: Path, max_bytes: int, *, what: str, hint: str = "") -> Any:
    """The YAML value of ``path`` (``None`` for an empty file). Raises ``FileNotFoundError`` when it
    is missing, and ``ValueError`` when it cannot be read, is over ``max_bytes`` or is not YAML."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if len(data) > max_bytes:
        raise ValueError(f"{what} {path} is over {max_bytes:,} bytes: it holds a few lines")
    try:
        return yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{what} {path} is not valid YAML ({exc}){'; ' + hint if hint else ''}") from exc
