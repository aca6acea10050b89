"""All message types of all codec modules, by name."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache

import bridge.protocols
from bridge.protocols.codec import MessageCodec


@cache
def all_codecs() -> dict[str, MessageCodec]:
    """Every ``CODECS`` entry of every module in :mod:`bridge.protocols`, keyed by name."""
    found: dict[str, MessageCodec] = {}
    for info in pkgutil.iter_modules(bridge.protocols.__path__):
        module = importlib.import_module(f"bridge.protocols.{info.name}")
        for codec in getattr(module, "CODECS", ()):
            if codec.name in found:
                raise RuntimeError(f"message type {codec.name!r} defined twice")
            found[codec.name] = codec
    return dict(sorted(found.items()))


def get_codec(name: str) -> MessageCodec:
    codecs = all_codecs()
    try:
        return codecs[name]
    except KeyError:
        raise KeyError(f"unknown message type {name!r}; known: {', '.join(codecs)}") from None
