"""The sampler (tokvid/sampling.py): MaskGIT chunk by chunk over the KV cache, CFG, candidates, codes."""
import math
import sys
from pathlib import Path

import pytest
import torch

import tokvid.sampling as sampling
from tiny_generator import (CODEBOOK, HEIGHT, TEST_SAMPLING, TEXT_LENGTH, TEXT_VOCAB, WIDTH, generate,
                            random_codes, random_text, seeded, tiny_config, tiny_model, train_tiny)
from tokvid.models.generator import Generator
from tokvid.sampling import SamplingConfig, first_chunk_log_likelihood, maskgit_step, sample

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


def test_generate_matches_a_sampler_without_cache():
    """sample() (KV cache, sliding window, CFG batched) equals MaskGIT driven by full forward passes."""
    model = tiny_model(window_chunks=2)
    text, steps, cfg_scale, chunks = random_text(2, 4), 4, 2.5, 4
    null = model.null_text(2, chunks)
    noise = seeded(3)
    decided = torch.zeros(2, 0, HEIGHT, WIDTH, dtype=torch.long)
    for chunk in range(chunks):
        tokens = torch.full((2, HEIGHT * WIDTH), CODEBOOK)
        for step in range(steps):
            sequence = torch.cat([decided, tokens.view(2, 1, HEIGHT, WIDTH)], dim=1)
            with torch.no_grad():
                cond = model(sequence, text[:, : chunk + 1])[:, -1].flatten(1, 2)
                uncond = model(sequence, null[:, : chunk + 1])[:, -1].flatten(1, 2)
            tokens = maskgit_step(tokens, uncond + cfg_scale * (cond - uncond), CODEBOOK, step, steps, 1.0, 6, noise)
        decided = torch.cat([decided, tokens.view(2, 1, HEIGHT, WIDTH)], dim=1)
    sampled = generate(model, text, steps=steps, cfg_scale=cfg_scale, top_k=6, generator=seeded(3))
    assert torch.equal(sampled, decided)


def test_generate_is_deterministic_by_seed_and_in_range():
    model = tiny_model()
    text = random_text(2, 3)
    first = generate(model, text, steps=3, generator=seeded(0))
    again = generate(model, text, steps=3, generator=seeded(0))
    other = generate(model, text, steps=3, generator=seeded(1))
    assert first.shape == (2, 3, HEIGHT, WIDTH) and first.dtype == torch.long
    assert int(first.min()) >= 0 and int(first.max()) < CODEBOOK
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_cfg_scale_zero_and_one_are_the_single_passes():
    model = tiny_model()
    text, negative = random_text(1, 3, seed=1), random_text(1, 3, seed=2)
    null = model.null_text(1, 3)

    def sample(prompt, scale, **options):
        return generate(model, prompt, steps=3, cfg_scale=scale, generator=seeded(5), **options)

    assert torch.equal(sample(text, 0.0), sample(null, 1.0))
    assert torch.equal(sample(text, 0.0, negative_text=negative), sample(negative, 1.0))
    assert torch.equal(sample(text, 1.0, negative_text=negative), sample(text, 1.0))
    assert not torch.equal(sample(text, 1.0), sample(null, 1.0))


def test_cfg_combines_the_two_streams(monkeypatch):
    model = tiny_model()
    text = random_text(1, 1)
    seen = []

    def recording_step(tokens, logits, *args):
        seen.append(logits.clone())
        return maskgit_step(tokens, logits, *args)

    monkeypatch.setattr(sampling, "maskgit_step", recording_step)
    generate(model, text, steps=1, cfg_scale=4.0, generator=seeded(0))
    all_masked = torch.full((1, 1, HEIGHT, WIDTH), CODEBOOK)
    with torch.no_grad():
        cond = model(all_masked, text).flatten(1, 3)
        uncond = model(all_masked, model.null_text(1, 1)).flatten(1, 3)
    assert torch.allclose(seen[0], uncond + 4.0 * (cond - uncond), atol=1e-4)


def test_maskgit_step_follows_cosine_schedule_and_keeps_committed_tokens():
    tokens = torch.full((2, 12), CODEBOOK)
    logits = torch.randn(2, 12, CODEBOOK, generator=seeded(0))
    history = []
    for step in range(4):
        previous = tokens
        tokens = maskgit_step(tokens, logits, CODEBOOK, step, 4, 1.0, None, seeded(step))
        committed = previous != CODEBOOK
        assert torch.equal(tokens[committed], previous[committed])
        history.append(int((tokens[0] == CODEBOOK).sum()))
    assert history == [math.floor(12 * math.cos(math.pi / 2 * s / 4)) for s in (1, 2, 3)] + [0]
    greedy = maskgit_step(torch.full((2, 12), CODEBOOK), logits, CODEBOOK, 0, 1, 0.0, None, None)
    assert torch.equal(greedy, logits.argmax(-1))
    top1 = maskgit_step(torch.full((2, 12), CODEBOOK), logits, CODEBOOK, 0, 1, 5.0, 1, seeded(0))
    assert torch.equal(top1, logits.argmax(-1))


def test_prime_is_kept_and_is_the_context_of_what_follows():
    model = tiny_model()
    text, prime = random_text(2, 5), random_codes(2, 2, seed=7)
    calls = []
    primed = generate(model, text, steps=4, prime_codes=prime, generator=seeded(0),
                      progress=lambda done, total: calls.append((done, total)))
    other = generate(model, text, steps=4, prime_codes=random_codes(2, 2, seed=8), generator=seeded(0))
    assert primed.shape == (2, 5, HEIGHT, WIDTH)
    assert torch.equal(primed[:, :2], prime)
    assert not torch.equal(primed[:, 2:], other[:, 2:])  # another past, another continuation
    assert calls == [(3, 5), (4, 5), (5, 5)]
    assert torch.equal(generate(model, text[:, :2], prime_codes=prime, generator=seeded(0)), prime)


def test_long_generation_past_training_length_with_one_prompt():
    model = tiny_model(window_chunks=3)
    codes = generate(model, random_text(1, 1)[:, 0], num_chunks=20, steps=2, generator=seeded(0))
    assert codes.shape == (1, 20, HEIGHT, WIDTH)


def test_first_chunk_candidates_keep_the_most_prompt_specific_first_chunk_and_sample_later_chunks_once(monkeypatch):
    model = tiny_model()
    text = random_text(2, 3)
    candidates = [random_codes(2, 1, seed=s)[:, 0].flatten(1) for s in (1, 2, 3)]
    later = random_codes(2, 1, seed=9)[:, 0].flatten(1)
    calls = []

    def prescribed(model, config, states_of, num_streams, batch, *args):
        calls.append(batch)
        return torch.cat(candidates) if len(calls) == 1 else later  # candidates come as one batch

    monkeypatch.setattr(sampling, "sample_chunk", prescribed)
    codes = generate(model, text, steps=2, first_chunk_candidates=3, generator=seeded(0))
    assert calls == [6, 2, 2]
    null = model.null_text(2, 1)[:, 0]
    with torch.no_grad():
        scores = torch.stack([first_chunk_log_likelihood(model, candidate, text[:, 0])
                              - first_chunk_log_likelihood(model, candidate, null) for candidate in candidates])
    assert scores.unique().numel() == scores.numel()  # the choice is not a tie
    for row, best in enumerate(scores.argmax(dim=0).tolist()):
        assert torch.equal(codes[row, 0].flatten(), candidates[best][row])
        assert all(torch.equal(codes[row, chunk].flatten(), later[row]) for chunk in (1, 2))


@pytest.mark.parametrize("patch", [1, 2])
def test_chunk_log_likelihood_prefers_the_first_chunk_a_tiny_model_learned(patch):
    torch.manual_seed(0)
    model = Generator(tiny_config(window_chunks=1, token_patch=patch))
    data = seeded(0)
    patterns = torch.randint(0, CODEBOOK, (4, 1, HEIGHT, WIDTH), generator=data)
    text = torch.tensor([[2, 4 + k, 3, 0, 0] for k in range(4)])[:, None]
    train_tiny(model, patterns, text, data, steps=150)
    with torch.no_grad():
        learned = first_chunk_log_likelihood(model, patterns.flatten(1), text[:, 0])
        other = first_chunk_log_likelihood(model, patterns.roll(1, dims=0).flatten(1), text[:, 0])  # another prompt's
    assert (learned > other).all() and (learned <= 0).all()


def test_first_chunk_choice_prefers_what_the_prompt_explains_over_the_commonest_chunk(monkeypatch):
    """Half of every prompt's clips show one common chunk, half a chunk of that prompt's own: the common
    one is as likely or likelier under the prompt, but only the prompt's own gains from it over the empty
    prompt."""
    torch.manual_seed(0)
    model = Generator(tiny_config(window_chunks=1))
    data = seeded(0)
    own = torch.randint(0, CODEBOOK, (4, 1, HEIGHT, WIDTH), generator=data)
    common = torch.randint(0, CODEBOOK, (1, 1, HEIGHT, WIDTH), generator=data).expand(4, -1, -1, -1)
    text = torch.tensor([[2, 4 + k, 3, 0, 0] for k in range(4)])[:, None]
    train_tiny(model, torch.cat([own, common]), text.repeat(2, 1, 1), data, steps=200)
    candidates = torch.cat([common[:, 0].flatten(1), own[:, 0].flatten(1)])  # sampled as one batch
    monkeypatch.setattr(sampling, "sample_chunk", lambda *args, **kwargs: candidates)
    with torch.no_grad():
        chosen = generate(model, text[:, 0], num_chunks=1, first_chunk_candidates=2)
        gain = first_chunk_log_likelihood(model, common[:, 0].flatten(1), text[:, 0]) \
            - first_chunk_log_likelihood(model, own[:, 0].flatten(1), text[:, 0])
    assert torch.equal(chosen, own)
    assert (gain > 0).any()  # the likelihood under the prompt alone would have kept the common chunk


def test_sampling_draws_only_codes_the_training_data_has():
    """code_counts (recorded by training) limits what generate draws to codes seen min_code_count times;
    0, or a generator whose counts were never recorded, draws from every code."""
    model = tiny_model()
    text = random_text(2, 3)

    def drawn(**options) -> set[int]:
        return set(generate(model, text, steps=2, temperature=2.0, generator=seeded(1), **options).flatten().tolist())

    everything = drawn()  # nothing recorded: every code may come out
    assert len(everything) > 8
    counts = torch.zeros(CODEBOOK, dtype=torch.long)
    counts[[1, 4, 9, 12]] = torch.tensor([1, 5, 5, 20])
    model.code_counts.copy_(counts)
    assert drawn() <= {1, 4, 9, 12} and drawn(min_code_count=5) <= {4, 9, 12} and drawn(min_code_count=20) == {12}
    assert drawn(min_code_count=0) == everything  # the restriction is the only change
    with pytest.raises(ValueError, match="excludes every code"):
        generate(model, text, min_code_count=21)


@pytest.mark.parametrize("options", [{}, dict(first_chunk_candidates=3), dict(cfg_scale=1.0, window_chunks=2)])
def test_sampling_without_cache_gives_the_same_codes(options):
    """bench/prefix_sampler.py re-runs the whole past at every step (to measure what the cache saves): it
    must draw exactly the codes of the cached sampler."""
    from prefix_sampler import sample_without_cache

    model = tiny_model(window_chunks=3).eval()
    text = torch.randint(4, TEXT_VOCAB, (2, 5, TEXT_LENGTH), generator=seeded(2))
    config = SamplingConfig(**{**TEST_SAMPLING, "steps": 3, "cfg_scale": 2.0, **options})
    cached = sample(model, text, config=config, generator=seeded(7))
    recomputed = sample_without_cache(model, text, config, generator=seeded(7))
    assert torch.equal(cached, recomputed)


def test_bad_sampling_inputs_raise_value_error():
    model = tiny_model()
    codes, text = random_codes(1, 2), random_text(1, 2)
    bad_calls = [
        lambda: generate(model, text, steps=0),
        lambda: generate(model, text, cfg_scale=-1.0),
        lambda: generate(model, text, temperature=-0.5),
        lambda: generate(model, text, top_k=0),
        lambda: generate(model, text, order="confidence"),                   # retired: unknown
        lambda: generate(model, text, window_chunks=0),
        lambda: generate(model, text, num_chunks=0),
        lambda: generate(model, text, num_chunks=3),                           # (B,n,L) with n != num_chunks
        lambda: generate(model, text[:, 0]),                                   # (B,L) without num_chunks
        lambda: generate(model, text, negative_text=text[..., :2]),
        lambda: generate(model, text, prime_codes=random_codes(1, 3)),         # more prime than chunks
        lambda: generate(model, text, prime_codes=random_codes(2, 1)),         # batch mismatch
        lambda: generate(model, text, prime_codes=codes + CODEBOOK),           # mask id not a code
        lambda: generate(model, text, first_chunk_candidates=0),
        lambda: generate(model, text, first_chunk_candidates=2.5),
        lambda: generate(model, text, temperature=float("inf")),
        lambda: generate(model, text, min_code_count=-1),
        lambda: generate(model, text, min_code_count=1.5),
    ]
    for number, call in enumerate(bad_calls):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {number} did not raise")
