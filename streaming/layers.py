"""The one-process channel layer of the default run: Channels' in-memory layer without its sweep of every queue and group on every message."""
from __future__ import annotations

import time
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer


class OneProcessChannelLayer(InMemoryChannelLayer):
    """Channels' `InMemoryChannelLayer` with two per-message costs taken out (docs/benchmarks.md):

    - Channels looks for expired messages and group memberships in every queue and every group on
      each `receive` and `group_send`: 8.7% of a worker's CPU with 50 sockets streaming. Here that
      sweep runs at most once a second; a message expires after a minute and a membership after
      `group_expiry`, so a second's delay changes nothing.
    - Channels' `group_send` starts a task per member to put the message in its queue, which never
      waits; here it is put in each queue directly.

    Delivery is otherwise the same: each member gets its own copy, and a full queue drops the message
    for that member only.
    """

    SWEEP_INTERVAL_SECONDS = 1.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._swept_at = float("-inf")

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now - self._swept_at >= self.SWEEP_INTERVAL_SECONDS:
            self._swept_at = now
            super()._clean_expired()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            try:
                await self.send(channel, message)
            except ChannelFull:
                pass
