"""Promises a mutation check found unguarded (issue 41, points 2-4), tested through public entry points:

- training draws no randomness from the global RNGs, so what a resumed run restores there cannot change it;
- the KV-cached path puts past chunks at the right time offset (a model that must tell chunk c-1 from
  chunk c-2 apart samples and scores the same through the cache as without it);
- the training loss averages over the masked tokens only, and text dropout drops the share it is set to.
"""
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tokvid.models.generator import Generator, GeneratorConfig
from tokvid.sampling import sample
from tokvid.training.engine import TrainingConfig, run_training

DS_CONFIG = {"zero_optimization": {"stage": 2}, "gradient_clipping": 1.0, "steps_per_print": 10**9}
CODEBOOK, TEXT_VOCAB = 8, 10


def config(**overrides) -> GeneratorConfig:
    settings = dict(codebook_size=CODEBOOK, text_vocab_size=TEXT_VOCAB, text_length=3, chunk_height=2, chunk_width=2,
                    dim=32, depth=2, heads=2, window_chunks=3)
    return GeneratorConfig(**{**settings, **overrides})


def prompts(batch: int, chunks: int) -> torch.Tensor:
    """bos, one piece, eos in every chunk: never the null text."""
    return torch.tensor([2, 5, 3]).expand(batch, chunks, 3).clone()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def scramble_global_rngs() -> None:
    """Put torch's, numpy's and Python's global RNGs in a state no run has seen (fresh OS entropy)."""
    seed = int.from_bytes(np.random.default_rng().bytes(4), "little")
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


# ---- resume: no random choice depends on the global RNG state ----------------------------------------


def test_training_loss_draws_nothing_from_the_global_rngs():
    torch.manual_seed(0)
    model = Generator(config(text_dropout=0.5))
    codes = torch.randint(0, CODEBOOK, (6, 4, 2, 2), generator=seeded(1))

    def loss_and_grads():
        scramble_global_rngs()
        model.zero_grad()
        loss, logs = model.training_loss(codes, prompts(6, 4), generator=seeded(7))
        loss.backward()
        return loss.detach(), logs, [p.grad.clone() for p in model.parameters()]

    first, second = loss_and_grads(), loss_and_grads()
    assert torch.equal(first[0], second[0]) and first[1] == second[1]
    assert all(torch.equal(a, b) for a, b in zip(first[2], second[2]))
    other = model.training_loss(codes, prompts(6, 4), generator=seeded(8))[0]
    assert not torch.equal(other.detach(), first[0])  # the step's generator does decide the draws


class StaticClips:
    """Random codes per item (from the item's own rng); optionally scrambles the global RNGs on every load,
    at the start of every step before anything of the step draws: what a resume that did not restore
    them would look like."""

    def __init__(self, scramble: bool):
        self.scramble = scramble

    def __len__(self):
        return 32

    def load(self, index, rng):
        if self.scramble:
            scramble_global_rngs()
        return {"codes": torch.from_numpy(rng.integers(0, CODEBOOK, (4, 2, 2))), "text": prompts(1, 4)[0]}

    def collate(self, samples):
        return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}

    def describe(self, index):
        return f"item {index}"


def train_generator(tmp_path, scramble_at_start: bool = False, scramble_before_loss: bool = False,
                    global_dropout: float = 0.0) -> list[float]:
    """Losses of 3 steps of run_training on a tiny generator, the global RNGs scrambled at the start of
    every step and/or right before its loss. global_dropout > 0 adds a dropout drawing from torch's
    global RNG, as a model with nn.Dropout would."""
    name = f"run-{scramble_at_start}-{scramble_before_loss}-{global_dropout}"
    run_config = TrainingConfig(out_dir=str(tmp_path / name), max_steps=3, micro_batch=4, save_every=10**9,
                                warmup_steps=1, lr=1e-2)

    def loss_fn(model, batch, generator):
        if scramble_before_loss:  # after the loop's own seeding: only draws from `generator` may decide the loss
            scramble_global_rngs()
        loss, logs = model.training_loss(batch["codes"], batch["text"], generator=generator)
        if global_dropout:
            loss = loss + F.dropout(torch.ones(64), global_dropout).mean() * 1e-3
        return loss, logs

    result = run_training(run_config, DS_CONFIG, lambda: Generator(config(text_dropout=0.5)),
                          StaticClips(scramble_at_start), loss_fn, lambda batch: batch["codes"][0].numel())
    return result.losses


def test_training_losses_do_not_depend_on_the_global_rng_state(tmp_path):
    """Scrambling the global RNGs at every step (at its start and right before the loss) changes no loss:
    checkpoints keep no RNG state and resume stays exact."""
    plain = train_generator(tmp_path)
    assert train_generator(tmp_path, scramble_at_start=True, scramble_before_loss=True) == plain
    assert len(set(plain)) == 3  # three different steps, not one repeated value


def test_a_model_drawing_from_the_global_rng_repeats_its_losses(tmp_path):
    """Dropout from torch's global RNG: the loop reseeds that RNG per (seed, step, rank, micro-step), so the
    state earlier steps or a resume leave there does not reach the losses."""
    plain = train_generator(tmp_path, global_dropout=0.5)
    assert train_generator(tmp_path, scramble_at_start=True, global_dropout=0.5) == plain
    # ... and the dropout does draw from it (else this test would prove nothing)
    assert train_generator(tmp_path, scramble_before_loss=True, global_dropout=0.5) != plain


# ---- the KV cache's time index -------------------------------------------------------------------


def alternating(batch: int, chunks: int, seed: int) -> torch.Tensor:
    """Videos A B A B ...: chunk c equals chunk c-2 and (almost always) differs from chunk c-1."""
    source = seeded(seed)
    first, second = (torch.randint(0, CODEBOOK, (batch, 1, 2, 2), generator=source) for _ in range(2))
    return torch.cat([first, second] * (chunks // 2), dim=1)


@pytest.fixture(scope="module")
def period_two_model() -> Generator:
    """A generator trained (a few seconds) to repeat the chunk two back: it must tell the keys one chunk
    back from those two back, which only their rotary time offsets do."""
    torch.manual_seed(0)
    model = Generator(config(text_dropout=0.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    draws = seeded(1)
    for step in range(80):
        loss, _ = model.training_loss(alternating(16, 6, seed=100 + step), prompts(16, 6), generator=draws)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_sampling_through_the_cache_repeats_the_chunk_two_back(period_two_model):
    """Primed with A B, greedy sampling through the KV cache continues A B A B: the cached keys of the
    chunks before sit at their true time offsets (one off, and the model copies the wrong chunk)."""
    videos = alternating(12, 6, seed=5)
    sampled = sample(period_two_model, prompts(12, 6), 6, steps=2, cfg_scale=1.0, temperature=0.0,
                     prime_codes=videos[:, :2], generator=seeded(0))
    assert torch.equal(sampled, videos)


@torch.no_grad()
def test_cached_logits_equal_recomputed_logits_of_a_context_driven_model(period_two_model):
    videos = alternating(4, 6, seed=6)
    masked = videos.clone()
    masked[:, 2:, 0] = CODEBOOK  # a row of every later chunk, to predict from the chunk two back
    full = period_two_model(masked, prompts(4, 6))
    cached = period_two_model.logits_with_cache(masked, prompts(4, 6))
    # the comparison means something only if the context decides the logits
    other_past = masked.clone()
    other_past[:, :2] = alternating(4, 2, seed=7)
    assert float((period_two_model(other_past, prompts(4, 6)) - full)[:, 2].abs().max()) > 3.0
    assert float((full - cached).abs().max()) <= 1e-4 * max(1.0, float(full.abs().max()))


# ---- the loss counts masked tokens only, text dropout drops its share --------------------------------


def position_blind_model(**overrides) -> tuple[Generator, float, float]:
    """A generator whose logits at a token depend on that token's input alone (every linear map back into
    the residual stream, attention output and MLP, zeroed, and the position tables too), and the
    cross-entropies of code 3 predicted from a masked input and from a visible 3."""
    torch.manual_seed(0)
    model = Generator(config(**overrides))
    with torch.no_grad():
        into_residual = [m for m in model.modules() if isinstance(m, nn.Linear) and m.out_features == model.config.dim]
        positions = [p for name, p in model.named_parameters() if "position" in name]
        assert len(into_residual) == 2 * model.config.depth and positions
        for parameter in [m.weight for m in into_residual] + positions:
            parameter.zero_()
        model.head.weight.mul_(50.0)  # confident logits: the two cross-entropies below differ clearly
        tokens = torch.full((1, 2, 2, 2), 3)
        tokens[:, :, 0] = CODEBOOK  # the mask id
        costs = F.cross_entropy(model(tokens, prompts(1, 2)).flatten(0, 3), tokens.flatten().clamp(max=3),
                                reduction="none").view(2, 2, 2)
    masked_costs, visible_costs = costs[:, 0], costs[:, 1]
    # position blind: one cost per kind of input, wherever it stands
    assert torch.allclose(masked_costs, masked_costs[0, 0]) and torch.allclose(visible_costs, visible_costs[0, 0])
    return model, float(masked_costs[0, 0]), float(visible_costs[0, 0])


def test_the_loss_is_the_mean_over_masked_tokens_only():
    """Every code is 3, so each masked token costs exactly from_mask and each visible one from_visible:
    the loss must be from_mask whatever the mask draws, with visible tokens in every batch."""
    model, from_mask, from_visible = position_blind_model()
    assert abs(from_mask - from_visible) > 1.0
    codes = torch.full((8, 4, 2, 2), 3)
    valid = torch.ones(8, 4, dtype=torch.bool)
    valid[:4, 3] = False  # trailing padding chunks: no loss there either
    with torch.no_grad():
        for seed in range(3):
            loss, logs = model.training_loss(codes, prompts(8, 4), valid, generator=seeded(seed))
            assert logs["mask_ratio"] < 0.9  # visible tokens exist, which a wrong mean would count
            assert float(loss) == pytest.approx(from_mask, abs=1e-4)
            assert logs["tokens"] == pytest.approx(logs["mask_ratio"] * int(valid.sum()) * 4)


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_text_dropout_drops_the_share_it_is_set_to(rate):
    """The share of training samples that see the null text, over 4000 samples, is the setting."""
    model = Generator(config(text_dropout=rate, dim=16, depth=1, chunk_height=1, chunk_width=2))
    seen = []
    text_embedding = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == TEXT_VOCAB]
    assert len(text_embedding) == 1
    text_embedding[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    batch = 4000
    with torch.no_grad():
        model.training_loss(torch.zeros(batch, 2, 1, 2, dtype=torch.long), prompts(batch, 2), generator=seeded(3))
    assert seen, "training_loss embedded no text"
    null = model.null_text(1, 1)[0, 0]
    for text in seen:  # (B, chunks, L) per call: a sample's chunks are all dropped or none
        dropped = (text == null).all(dim=-1)
        assert torch.equal(dropped.all(dim=1), dropped.any(dim=1))
        share = float(dropped[:, 0].float().mean())
        if rate == 0.0:
            assert share == 0.0
        else:  # 4000 draws: the standard error is <= 0.008
            assert share == pytest.approx(rate, abs=0.03)
