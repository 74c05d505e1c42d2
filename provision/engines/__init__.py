"""The serving engines as product code: one adapter per backend (how it is started, what it needs)
and ManagedServer (a server process owned from start to stop). serve, smoke and fleet use them."""

from provision.engines.adapters import ADAPTERS, EngineAdapter
from provision.engines.server import ManagedServer, ServerError, free_port, offline_env

__all__ = ["ADAPTERS", "EngineAdapter", "ManagedServer", "ServerError", "free_port", "offline_env"]
