"""xinfer-setup: probe a machine, plan its Xinference stack, install it, prove it works.

Layers, each importing only those before it: probe -> planner -> install -> engines -> serve;
requirements (requirement strings read with packaging), backends (the registry) and recipes sit
below them all, read by every layer; smoke sits above them all and registers its own command.
"""

__version__ = "0.1.0"
