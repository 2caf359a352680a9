"""What the RL-side callbacks did, kept for their checkpoints and written as JSON lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from typing_extensions import override


def append_jsonl(path: str | Path | None, row: dict[str, Any]) -> None:
    """Append ``row`` as one JSON line to ``path`` (its folder created; nothing when ``path`` is None)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


class RealStepsHistory(L.Callback):
    """A callback whose rows (``history``, also appended to ``history_path``) used real simulator steps
    (``real_steps_total``); both are its checkpoint state."""

    def __init__(self, history_path: str | None = None):
        super().__init__()
        self.history_path = history_path
        self.history: list[dict[str, Any]] = []
        self.real_steps_total = 0

    def record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        append_jsonl(self.history_path, row)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "real_steps_total": self.real_steps_total}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.real_steps_total = int(state_dict.get("real_steps_total", 0))
