"""Each engine's API-key option is the adapter's api_key_flag, and the key launcher passes that
same option: the key ends up where the engine takes it, and never on the command line we build."""

from __future__ import annotations

from pathlib import Path

from provision.engines.adapters import ADAPTERS, LaunchSettings
from provision.serve.keys import KEYED_LAUNCH, keyed_command

PY = Path("/envs/x/bin/python")
LAUNCH = LaunchSettings(served_name="m", host="127.0.0.1", port=8123)


def _model(adapter) -> Path:
    return Path("/m.gguf") if adapter.model_format == "gguf" else Path("/models/m")


def test_the_keyed_launch_adds_the_key_where_the_engine_takes_it():
    keyed = [a for a in ADAPTERS.values() if a.supports_api_key]
    assert {a.name for a in keyed} >= {"vllm", "sglang", "llama-cpp-python", "xllamacpp"}
    for adapter in keyed:
        bare = adapter.server_command(PY, _model(adapter), LAUNCH)
        assert adapter.api_key_flag not in bare, adapter.name  # no key option on our argv
        launched = keyed_command(bare, adapter.api_key_flag)
        assert launched[:3] == [str(PY), str(KEYED_LAUNCH), adapter.api_key_flag]
        # keyed_launch.py runs argv[3:] with `flag KEY` appended from the key file.
        assert [launched[0], *launched[3:]] == bare, adapter.name


def test_llama_cpp_python_takes_its_pydantic_spelling_and_transformers_none():
    assert ADAPTERS["llama-cpp-python"].api_key_flag == "--api_key"
    transformers = ADAPTERS["transformers"]
    assert transformers.api_key_flag is None and not transformers.supports_api_key
