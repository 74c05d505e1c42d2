"""xinfer-setup: probe a machine, plan its Xinference stack, install it, prove it works."""

__version__ = "0.1.0"
