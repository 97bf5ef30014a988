import os

import pytest
import torch

from tokvid.models.generator import Generator, generator_config_preset
from tokvid.pipeline import save_pipeline
from tokvid.sampling import SamplingConfig
from tokvid.shapes import COLOURS, MOTIONS, SHAPES, caption
from tokvid.models.text_tokenizer import train_text_tokenizer
from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset

os.environ.setdefault("DS_ACCELERATOR", "cpu")


def pytest_configure(config):
    config.addinivalue_line("markers", "demo: serves `tokvid demo` (browser, client and load tests); "
                                       "a fast run skips them with -m 'not demo'")


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tiny test models run far faster on one thread than two on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """An untrained but complete pipeline directory: enough to test shapes, determinism and errors."""
    root = tmp_path_factory.mktemp("pipe")
    torch.manual_seed(0)
    video = VideoTokenizer(video_tokenizer_preset("tiny"))
    captions = [caption(c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS]
    text = train_text_tokenizer(captions, root / "text", vocab_size=128, max_length=10)
    config = generator_config_preset("tiny", codebook_size=video.vocab_size, text_vocab_size=text.vocab_size,
                                     text_length=text.max_length, dim=32, depth=2, heads=2, window_chunks=4,
                                     text_pad_id=text.pad_id)
    save_pipeline(root / "pipe", Generator(config), text, video, fps=8, sampling=SamplingConfig(steps=2, redraw_first_frame=False))
    return root / "pipe"


def pytest_configure(config):
    config.addinivalue_line("markers", "bench: a bench/ script's end-to-end smoke run (> ~20 s); "
                                       "runs by default, deselect with -m 'not bench'")
