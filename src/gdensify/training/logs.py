"""`AppendingCSVLogger`: Lightning's CSV log without its truncation, so a resumed run keeps its history.

Lightning's `CSVLogger` deletes `metrics.csv` whenever a logger opens a non-empty log folder (every `--resume`,
even one that fails) and rewrites the file in place when a new column appears. Here rows are only ever appended;
a file whose header must grow is rewritten to a temporary file and renamed (`atomic_path`), so a kill at any moment
leaves every row written so far. A resumed run appends its rows after the old ones; steps between the last
checkpoint and a kill therefore appear twice (with the same values: resumption is exact).
"""

from __future__ import annotations

import csv
import os
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from ..io import atomic_path

__all__ = ["AppendingCSVLogger"]


class _AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        self.metrics_keys = self._header()

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here
        pass

    def _header(self) -> list[str]:
        """The columns of an existing metrics.csv; a last row cut short by a kill is completed with a newline."""
        path = self.metrics_file_path
        if not os.path.isfile(path) or os.path.getsize(path) == 0:
            return []
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")
        with open(path, newline="") as f:
            return next(csv.reader(f), [])

    def save(self) -> None:
        if not self.metrics:
            return
        keys = sorted(set(self.metrics_keys).union(*self.metrics))
        exists = os.path.isfile(self.metrics_file_path) and os.path.getsize(self.metrics_file_path) > 0
        if exists and keys != self.metrics_keys:
            with open(self.metrics_file_path, newline="") as f:
                rows: list[dict[str, Any]] = list(csv.DictReader(f))
            with atomic_path(self.metrics_file_path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows(rows)
        self.metrics_keys = keys
        with open(self.metrics_file_path, "a" if exists else "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            if not exists:
                writer.writeheader()
            writer.writerows(self.metrics)
        self.metrics = []


class AppendingCSVLogger(CSVLogger):
    """`CSVLogger` that appends to an existing `metrics.csv` instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment
