"""Progress bars for long work: shown on a terminal, silent in logs, pipes and ``--json`` runs."""

from __future__ import annotations

import sys

from tqdm.auto import tqdm


def progress(iterable, total: int, desc: str, enabled: bool | None = None):
    """A tqdm bar on a terminal, silent elsewhere (CI logs, pipes, ``--json``)."""
    show = sys.stderr.isatty() if enabled is None else enabled
    return tqdm(iterable, total=total, desc=desc, disable=not show, leave=False, unit="batch")
