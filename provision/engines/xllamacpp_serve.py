"""Serve a GGUF with xllamacpp's built-in OpenAI-compatible HTTP server until SIGTERM.

xllamacpp has no command line: constructing xllamacpp.Server(CommonParams) loads the
model and starts llama.cpp's HTTP server on params.hostnames/params.port in its own
threads. This launcher, run under the ENGINE's python, is that command line; it imports
only the standard library and xllamacpp.

    python xllamacpp_serve.py --model tiny.gguf --host 127.0.0.1 --port 8081 --alias tiny
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--alias", default=None)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--n-gpu-layers", type=int, default=-1)
    parser.add_argument("--f32-kv-cache", action="store_true")
    args = parser.parse_args(argv)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.n_ctx
    params.n_parallel = 1
    params.n_gpu_layers = args.n_gpu_layers
    params.use_jinja = True
    params.offline = True
    if args.alias:
        params.model_alias = {args.alias}
    if args.api_key:
        params.api_keys = [args.api_key]
    if args.f32_kv_cache:
        params.cache_type_k = xllamacpp.ggml_type.GGML_TYPE_F32
        params.cache_type_v = xllamacpp.ggml_type.GGML_TYPE_F32

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xllamacpp.Server(params)
    print(f"xllamacpp {xllamacpp.__version__} serving on {server.listening_address}", flush=True)
    while not stop.wait(0.5):
        pass
    print("xllamacpp: SIGTERM, stopping", flush=True)
    del server
    return 0


if __name__ == "__main__":
    sys.exit(main())
