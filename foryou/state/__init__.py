"""The engine's derived state in memory (`Live`), by concern: users, items, checkpoints."""

from foryou.state.fields import LiveUser
from foryou.state.live import Live

__all__ = ["Live", "LiveUser"]
