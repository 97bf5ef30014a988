"""json.loads, through orjson when it is installed (it parses a short line several times faster, and gives
the same dicts for the JSON tokvid reads and writes); token shard and manifest lines are parsed by the million."""
from __future__ import annotations

try:
    from orjson import JSONDecodeError, loads
except ImportError:  # pragma: no cover - orjson comes with gradio, but tokvid does not need it
    from json import JSONDecodeError, loads

__all__ = ["JSONDecodeError", "loads"]
