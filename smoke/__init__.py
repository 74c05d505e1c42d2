"""The smoke test: a tiny local model on every installed engine, served and answered (uses provision).

API: run_smoke(pythons, profile, model, work_dir) -> SmokeReport (smoke.runner); the command is smoke.command.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SmokeReport", "run_smoke"]


def __getattr__(name: str) -> Any:
    # Imported on use: `import smoke` alone must not load numpy and the engines.
    if name in __all__:
        from smoke import runner

        return getattr(runner, name)
    raise AttributeError(name)
