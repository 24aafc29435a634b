"""Small helpers shared by tests (not needed by fs2mini itself)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every record of a run's metrics.jsonl, in order."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
