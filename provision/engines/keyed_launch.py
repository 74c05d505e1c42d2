"""Start an engine's server with its API key from a file, so the key never sits in argv.

Run under the ENGINE's python, standard library only:

    XINFER_SETUP_API_KEY_FILE=/path/0600-file python keyed_launch.py --api-key -m vllm.entrypoints... ARGS
    XINFER_SETUP_API_KEY_FILE=/path/0600-file python keyed_launch.py --api-key /path/script.py ARGS

The file is read and deleted and the variable dropped before the server runs; the key is put
into this process's sys.argv only, which /proc/PID/cmdline (what `ps` shows) never reflects:
that shows the exec'd argv, which holds no key.
"""

from __future__ import annotations

import os
import runpy
import sys

KEY_FILE_ENV = "XINFER_SETUP_API_KEY_FILE"


def main() -> None:
    if len(sys.argv) < 3:
        sys.exit("usage: keyed_launch.py KEY_FLAG (-m MODULE | SCRIPT) [ARGS...]")
    flag, rest = sys.argv[1], sys.argv[2:]
    path = os.environ.pop(KEY_FILE_ENV, None)
    if not path:
        sys.exit(f"keyed_launch: {KEY_FILE_ENV} is not set")
    with open(path, encoding="utf-8") as f:
        key = f.read().strip()
    os.unlink(path)
    if rest[0] == "-m":
        module, args = rest[1], rest[2:]
        sys.argv = [module, *args, flag, key]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        script, args = rest[0], rest[1:]
        sys.argv = [script, *args, flag, key]
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
