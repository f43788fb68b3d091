"""The server's open-vocabulary detectors (text -> boxes), one per detector id, built on first use.

Every text prompt of every dialect goes through this one cache, so a detector is loaded once per process.
The default detector is `settings.text_model`, placed on `settings.device`.
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from segany.server.settings import ServerSettings

if TYPE_CHECKING:
    from segany.predict.text.grounding import TextGrounder


class DetectorPool:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self._grounders: dict[str, TextGrounder] = {}
        self._lock = threading.Lock()
        self._override: TextGrounder | None = None

    def get(self, model_id: str | None = None) -> TextGrounder:
        """The `TextGrounder` for `model_id` (None: the server's default); blocks while it loads (seconds)."""
        from segany.predict.text.grounding import TextGrounder  # transformers is the optional extra segany[text]

        if self._override is not None and model_id is None:
            return self._override
        model_id = model_id or self.settings.text_model
        with self._lock:
            if model_id not in self._grounders:
                self._grounders[model_id] = TextGrounder(model_id=model_id, device=self.settings.device)
            return self._grounders[model_id]

    def set_default(self, grounder: TextGrounder | None) -> None:
        """Answer requests for the default detector with `grounder` (any `TextGrounder`); None restores it."""
        self._override = grounder
