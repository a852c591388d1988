"""Where the lab keeps what it computes: the run store ($LAB_STORE, default <repo root>/store), and making a
rename there durable (`fsync_dir`).

Used by the training path (the prepared-data cache, `rig.corpus.data_dir`) and the run store
(`store.runs.store_dir`); a location changes no bit of a recording, so this module is not in the run key.
`publish.generated.store_dir` spells the same rule again, because publish never imports experiments.
"""

from __future__ import annotations

import os
from pathlib import Path


def store_dir() -> Path:
    """The run store: $LAB_STORE or <repo root>/store."""
    return Path(os.environ.get("LAB_STORE") or Path(__file__).resolve().parents[1] / "store")


def fsync_dir(path: Path) -> None:
    """Make the renames inside directory `path` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
