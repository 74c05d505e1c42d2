"""Class 18: a mirror without some pins is named before anything changes.

A real simple index (PEP 503 pages) served on 127.0.0.1 lists every pin of a real plan but one;
install must refuse, name that pin, and leave the root without any environment.
"""

from __future__ import annotations

import http.server
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest

from provision.errors import OperationFailed
from provision.install.pin_check import listing, missing_pins, plan_pins
from provision.install.pipconfig import IndexConfig
from provision.install.progress import Reporter
from provision.install.run import InstallOptions, install_plan
from provision.plan import PlanRequest
from provision.planner import load_recipes, make_plan
from provision.profile import load_profile

PROFILES = Path(__file__).parent / "profiles"


def _page(files: list[str]) -> str:
    links = "".join(f'<a href="../../files/{f}#sha256={"0" * 64}">{f}</a>\n' for f in files)
    return f"<!DOCTYPE html><html><body>\n{links}</body></html>\n"


@contextmanager
def served(root: Path):
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


def _plan():
    profile = load_profile(PROFILES / "linux-graviton3-cpu.json")
    return make_plan(profile, PlanRequest(backends=("xinference", "transformers")), load_recipes())


def _mirror(root: Path, pins, leave_out: str) -> None:
    for pin in pins:
        if pin.project == leave_out:
            continue
        d = root / "simple" / pin.project
        d.mkdir(parents=True, exist_ok=True)
        wheel = f"{pin.project.replace('-', '_')}-{pin.version}-py3-none-any.whl"
        (d / "index.html").write_text(_page([wheel]))


def test_a_mirror_lacking_one_pin_is_refused_before_any_change(tmp_path):
    plan = _plan()
    pins = plan_pins(plan, ("x",))
    assert {p.project for p in pins} >= {"xinference", "transformers"}
    gone = "transformers"
    _mirror(tmp_path / "mirror", pins, gone)
    said: list[str] = []
    with served(tmp_path / "mirror") as url:
        opts = InstallOptions(index=IndexConfig(index_url=url), check_disk=False)
        reporter = Reporter()
        reporter.say = said.append  # type: ignore[method-assign]
        with pytest.raises(OperationFailed) as e:
            install_plan(plan, tmp_path / "root", options=opts, reporter=reporter)
    want = next(p for p in pins if p.project == gone)
    assert f"{gone}=={want.version}" in str(e.value)
    assert "xinference==" not in str(e.value)  # only the missing one is named
    assert not list((tmp_path / "root").glob("**/pyvenv.cfg"))  # no environment was made


def test_a_version_the_mirror_lacks_is_missing_and_a_silent_index_proves_nothing(tmp_path):
    plan = _plan()
    pins = plan_pins(plan, ("x",))
    _mirror(tmp_path / "mirror", pins, leave_out="")
    with served(tmp_path / "mirror") as url:
        state, versions = listing(url, "xinference")
        assert state == "listed" and versions
        assert listing(url, "no-such-project")[0] == "absent"
        bumped = tuple(type(p)(p.project, p.version + ".post9", (url,)) for p in pins[:1])
        missing, silent = missing_pins(bumped)
        assert missing == [f"{pins[0].project}=={pins[0].version}.post9"] and silent == []
    dead = "http://127.0.0.1:9/simple"
    missing, silent = missing_pins(tuple(type(p)(p.project, p.version, (dead,)) for p in pins[:1]), timeout=2)
    assert missing == [] and silent == [dead]


def test_a_gpu_wheel_missing_from_its_own_index_is_named_even_if_pypi_has_the_version(tmp_path):
    """Classes 4 and 20: xllamacpp's GPU index lagging PyPI must not fall back to PyPI's CPU wheel."""
    profile = load_profile(PROFILES / "linux-h100-driver590.json")
    plan = make_plan(profile, PlanRequest(backends=("xllamacpp",)), load_recipes())
    xl = plan.backend("xllamacpp")
    assert xl.extra_index_urls  # the GPU index is planned
    (pin,) = [p for p in plan_pins(plan, ("https://pypi.example/simple",)) if p.project == "xllamacpp"]
    assert pin.sources == xl.extra_index_urls  # not PyPI, where the same version is the CPU wheel
    lagging = tmp_path / "gpu-index"
    d = lagging / "simple" / "xllamacpp"
    d.mkdir(parents=True)
    (d / "index.html").write_text(_page(["xllamacpp-0.1.0-cp310-abi3-manylinux2014_x86_64.whl"]))
    with served(lagging) as url:
        missing, silent = missing_pins((type(pin)(pin.project, pin.version, (url,)),))
    assert missing == [f"xllamacpp=={pin.version}"] and silent == []
