"""xinfer-setup: probe a machine, plan its Xinference stack, install it, prove it works.

Layers, each importing only those before it: probe -> planner -> install -> engines -> serve
(the planner's resolver borrows install.requirements, a leaf on packaging alone); backends (the
registry) and recipes are data every layer reads; smoke sits above them all.
"""

__version__ = "0.1.0"
