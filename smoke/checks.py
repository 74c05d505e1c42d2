"""Pure judgements the smoke run makes: is an answer right, do two engines agree, where did
an engine put the model. No I/O here; the runner feeds these what it collected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Prompt logits of two float32 engines agree to ~5e-6 here (llama.cpp with an F32 KV cache);
# an F16 KV cache alone gives ~1e-3, a wrong rotary layout gives O(1).
CPU_LOGIT_TOLERANCE = 1e-4
# On a GPU, float32 kernels (TF32 matmuls, other summation orders) move logits further than
# numpy's; greedy ids must still match exactly.
GPU_LOGIT_TOLERANCE = 1e-3
LOGIT_TOLERANCE = CPU_LOGIT_TOLERANCE
MIN_AGREEING_TOKENS = 8


@dataclass(frozen=True)
class Agreement:
    left: str
    right: str
    status: Literal["pass", "fail"]
    reason: str
    tokens_compared: int
    first_divergence: int | None
    max_logit_diff: float | None

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def compare_greedy(
    left: str,
    right: str,
    left_ids: list[int],
    right_ids: list[int],
    left_logits=None,
    right_logits=None,
    tolerance: float = LOGIT_TOLERANCE,
    min_tokens: int = MIN_AGREEING_TOKENS,
) -> Agreement:
    """Same greedy ids for at least min_tokens, and prompt logits within tolerance."""
    n = min(len(left_ids), len(right_ids))
    first = next((i for i in range(n) if left_ids[i] != right_ids[i]), None)
    max_diff = None
    if left_logits is not None and right_logits is not None:
        a, b = np.asarray(left_logits, dtype=np.float64), np.asarray(right_logits, dtype=np.float64)
        if a.shape != b.shape:
            return Agreement(
                left, right, "fail", f"prompt logits have shapes {a.shape} and {b.shape}", n, first, None
            )
        max_diff = float(np.max(np.abs(a - b)))
    problems = []
    if first is not None:
        problems.append(
            f"greedy tokens diverge at new token {first}: {left_ids[first]} vs {right_ids[first]}"
        )
    elif n < min_tokens:
        problems.append(f"only {n} new tokens to compare, need {min_tokens}")
    if max_diff is not None and not max_diff <= tolerance:
        problems.append(f"prompt logits differ by up to {max_diff:.3g} (tolerance {tolerance:g})")
    if problems:
        return Agreement(left, right, "fail", "; ".join(problems), n, first, max_diff)
    detail = f", prompt logits within {max_diff:.2g}" if max_diff is not None else ""
    return Agreement(left, right, "pass", f"{n} greedy tokens identical{detail}", n, None, max_diff)


class AnswerError(Exception):
    pass


def check_chat_answer(
    text: str | None,
    streamed: str,
    finish_reason: str | None,
    completion_tokens: int | None,
    max_tokens: int,
    expected: str | None,
    cut_char_ok: bool = False,
) -> None:
    """Raise AnswerError with the first thing wrong with a served chat answer.

    expected is the float32 reference answer, None where the engine computes in half precision.
    cut_char_ok: the answer may end in U+FFFD where the stream does not (Xinference decodes a
    multi-byte character cut off by max_tokens; its stream holds the incomplete bytes back).
    """
    if cut_char_ok and isinstance(text, str):
        text, streamed = text.rstrip("\ufffd"), streamed.rstrip("\ufffd")
    if not isinstance(text, str) or not text:
        raise AnswerError(f"empty answer (content={text!r})")
    if finish_reason not in ("stop", "length"):
        raise AnswerError(f"finish_reason {finish_reason!r} is neither 'stop' nor 'length'")
    if not completion_tokens or not 0 < completion_tokens <= max_tokens:
        raise AnswerError(f"usage.completion_tokens {completion_tokens!r} is not in 1..{max_tokens}")
    if streamed != text:
        raise AnswerError(f"streamed answer {streamed!r} differs from the non-streamed {text!r} (greedy)")
    if expected is not None and text != expected:
        raise AnswerError(f"answer {text!r} is not the model's greedy answer {expected!r}")


# llama.cpp's load log on a CUDA build (real lines):
#   load_tensors: offloading 32 repeating layers to GPU
#   load_tensors: offloaded 33/33 layers to GPU
#   load_tensors:        CUDA0 model buffer size =  4403.49 MiB
#   load_tensors:   CPU_Mapped model buffer size =   281.81 MiB
# A CPU-only build prints only the CPU_Mapped line.
_OFFLOADED = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_GPU_BUFFER = re.compile(r"^\S*:?\s*((?:CUDA|ROCm|Metal|Vulkan|MTL)\d*) model buffer size", re.M)


def llama_cpp_placement(log: str) -> str:
    """Where llama.cpp put the model, from its load log: 'cpu' or e.g. 'CUDA0, 3/3 layers offloaded'."""
    offloaded = _OFFLOADED.search(log)
    devices = sorted(set(_GPU_BUFFER.findall(log)))
    if offloaded and int(offloaded.group(1)) > 0:
        where = ", ".join(devices) or "GPU"
        return f"{where}, {offloaded.group(1)}/{offloaded.group(2)} layers offloaded"
    return "cpu"
