"""ForYou: a self-hostable, real-time "For You" feed engine for short-video platforms."""

from foryou.config import Settings, load_settings
from foryou.engine import Engine
from foryou.errors import ForYouError

__all__ = ["Engine", "ForYouError", "Settings", "load_settings"]
__version__ = "0.1.0"
