"""Tiny generators and inputs shared by the generator and sampler tests."""
import torch

from tokvid.models.generator import Generator, GeneratorConfig
from tokvid.sampling import sample

CODEBOOK, TEXT_VOCAB, TEXT_LENGTH, HEIGHT, WIDTH = 16, 12, 5, 2, 4
# the tests' sampling: two guidance streams and one first chunk unless a test says otherwise
TEST_SAMPLING = dict(cfg_scale=3.0, temperature=1.0, first_chunk_candidates=1)


def tiny_config(**overrides) -> GeneratorConfig:
    settings = dict(codebook_size=CODEBOOK, text_vocab_size=TEXT_VOCAB, text_length=TEXT_LENGTH,
                    chunk_height=HEIGHT, chunk_width=WIDTH, dim=32, depth=2, heads=2, window_chunks=8)
    return GeneratorConfig(**{**settings, **overrides})


def tiny_model(seed: int = 0, **overrides) -> Generator:
    torch.manual_seed(seed)
    model = Generator(tiny_config(**overrides))
    # Stronger than the 0.02 init so that text and context visibly change the logits in tests.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(10.0 if parameter.dim() > 1 else 1.0)
    return model


def random_codes(batch: int, chunks: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CODEBOOK, (batch, chunks, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(seed))


def random_text(batch: int, chunks: int, seed: int = 0) -> torch.Tensor:
    """bos, 1-2 pieces, eos, pads: varying pad counts exercise the key mask."""
    source = torch.Generator().manual_seed(seed)
    text = torch.zeros(batch, chunks, TEXT_LENGTH, dtype=torch.long)
    for b in range(batch):
        for c in range(chunks):
            pieces = torch.randint(4, TEXT_VOCAB, (int(torch.randint(1, 3, (1,), generator=source)),), generator=source)
            text[b, c, : len(pieces) + 2] = torch.cat([torch.tensor([2]), pieces, torch.tensor([3])])
    return text


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def train_tiny(model: Generator, clips: torch.Tensor, text: torch.Tensor, data: torch.Generator, steps: int) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = model.training_loss(clips, text, generator=data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def generate(model: Generator, text: torch.Tensor, num_chunks: int | None = None, **options) -> torch.Tensor:
    """tokvid.sampling.sample with the tests' sampling options."""
    return sample(model, text, num_chunks, **{**TEST_SAMPLING, **options})
