"""Online, opt-in (XINFER_ONLINE_TESTS=1): fails when PyPI has a release the recipes do not know.

The maintainers' recipe runs it on a schedule (README, "Keeping the recipes current"); the
offline suite skips it, so no other test depends on the network for the recipes' age
(`plan` reports that age from recipes/backends.toml alone).
"""

from __future__ import annotations

import os

import pytest
from packaging.version import Version

from provision.backends import backend_tables, registry
from provision.planner import load_recipes
from provision.planner.derive import derive_backend
from provision.planner.index_meta import PYPI_SIMPLE, IndexView
from provision.planner.resolve import uv_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("XINFER_ONLINE_TESTS") != "1",
        reason="online: reads PyPI; set XINFER_ONLINE_TESTS=1 (the maintainers' scheduled CI does)",
    ),
]


def test_no_backend_has_a_release_on_pypi_that_the_recipes_do_not_know():
    view = IndexView(PYPI_SIMPLE, uv_binary(), load_recipes())
    behind = []
    for b in registry():
        if b.name == "transformers":
            # Not the newest release: the newest that co-installs with xinference (uv decides).
            newest = Version(derive_backend(view, b.name, backend_tables()[b.name]).version)
        else:
            found = view.newest(b.dist)
            assert found is not None, f"{b.dist} has no release on PyPI"
            newest = found
        if newest > Version(b.version):
            behind.append(f"{b.name} {newest} (recipes: {b.version})")
    assert not behind, (
        f"PyPI has releases the recipes do not know: {', '.join(behind)}; run scripts/refresh-recipes"
    )
