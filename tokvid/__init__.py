"""tokvid: text and stories to video of any length through discrete video tokens.

    import tokvid
    pipe = tokvid.TokVidPipeline.from_pretrained()            # the bundled shapes-v1 story model
    out = pipe.story([("a red circle moves right", 16), ("a red circle moves down", 16)], seed=0)
    tokvid.write_video("story.mp4", out.frames, fps=out.fps)

The video tokenizer (`tokvid.VideoTokenizer`) works on its own: it needs neither the generator nor DeepSpeed.
"""
from .story import validate_segments
from .video_io import frames_to_tensor, read_video, save_contact_sheet, tensor_to_frames, write_video
from .models.video_tokenizer import VideoTokenizer, VideoTokenizerConfig, video_tokenizer_preset
from .models.text_tokenizer import PromptWarning, TextTokenizer
from .pipeline import TokVidPipeline, VideoOutput
from .sampling import SamplingConfig

__version__ = "0.1.0"

__all__ = [
    "read_video", "write_video", "save_contact_sheet", "frames_to_tensor", "tensor_to_frames",
    "VideoTokenizer", "VideoTokenizerConfig", "video_tokenizer_preset", "TextTokenizer",
    "TokVidPipeline", "SamplingConfig", "VideoOutput", "PromptWarning", "validate_segments",
]
