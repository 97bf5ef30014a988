"""tokvid: text and stories to video of any length through discrete video tokens.

    import tokvid
    pipe = tokvid.TokVidPipeline.from_pretrained()            # the bundled shapes-v1 story model
    out = pipe.story([("a red circle moves right", 16), ("a red circle moves down", 16)], seed=0)
    tokvid.write_video("story.mp4", out.frames, fps=out.fps)

The video tokenizer (`tokvid.VideoTokenizer`) works on its own: it needs neither the generator nor DeepSpeed.
The public names are imported on first use, so `import tokvid` (and `tokvid generate --help`) stays fast
and loads torch only when something needs it.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_HOMES = {  # public name -> the module that defines it
    "read_video": "video_io", "write_video": "video_io", "save_contact_sheet": "video_io",
    "frames_to_tensor": "video_io", "tensor_to_frames": "video_io",
    "VideoTokenizer": "models.video_tokenizer", "VideoTokenizerConfig": "models.video_tokenizer",
    "video_tokenizer_preset": "models.video_tokenizer",
    "TextTokenizer": "models.text_tokenizer", "PromptWarning": "models.text_tokenizer",
    "TokVidPipeline": "pipeline", "VideoOutput": "pipeline",
    "SamplingConfig": "sampling_config", "validate_segments": "story",
}
__all__ = list(_HOMES)


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'tokvid' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
