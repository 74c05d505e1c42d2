"""The wheel ships every package of the checkout: a package missing from pyproject's list would
import here (from the checkout) and fail only after a real install elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parent.parent


def test_every_package_directory_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: REPO / where for name, where in config["package-dir"].items()}
    on_disk = set()
    for top in ("provision", "smoke"):
        for init in (REPO / top).rglob("__init__.py"):
            on_disk.add(".".join(init.parent.relative_to(REPO).parts))
    for name, where in mapped.items():
        assert (where / "__init__.py").exists(), f"{name} maps to {where}, which is no package"
        on_disk.add(name)
    assert on_disk - listed == set(), f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    extra = sorted(listed - on_disk)
    assert not extra, f"pyproject.toml lists packages that do not exist: {extra}"
