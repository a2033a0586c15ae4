"""The directory several `idhub serve` workers keep their metric values in."""

from __future__ import annotations

import shutil
from pathlib import Path


def fresh_metrics_dir(var_dir: Path) -> Path:
    """VAR/metrics emptied: values of an earlier run's workers must not be summed in."""
    path = var_dir / "metrics"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path
