"""Shared readers for the plain-text sources the probe parses."""

from __future__ import annotations


def colon_pairs(text: str) -> dict[str, str]:
    """`key: value` lines -> dict, keys and values stripped, values keeping their inner spaces
    (sysctl output, /proc/driver/nvidia/gpus/*/information). Lines without a key are skipped."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip():
            out[key.strip()] = value.strip()
    return out
