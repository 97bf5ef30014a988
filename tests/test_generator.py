import json
import math

import pytest
import torch
import torch.nn.functional as F

import tokvid.models.generator as generator_module
from tokvid.models.generator import (LATER_CANDIDATE_UNCOND_WEIGHT, Generator, GeneratorConfig, generator_config_preset,
                             maskgit_step)

CODEBOOK, TEXT_VOCAB, TEXT_LENGTH, HEIGHT, WIDTH = 16, 12, 5, 2, 4


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


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(codebook_size=1), dict(text_length=1), dict(dim=30, heads=4), dict(dim=36, heads=4),
    dict(window_chunks=0), dict(text_dropout=1.0), dict(clean_context=1), dict(dim=24, heads=2), dict(code_levels=[4, 3]),
    dict(code_levels=[16, 1]), dict(code_levels=[]), dict(digit_head=True), dict(code_levels=[4, 4], digit_head=1),
    dict(digit_mixture=2), dict(code_levels=[4, 4], digit_head=True, digit_mixture=0),
    dict(clean_chunk_prob=-0.1), dict(depth=0),
    dict(text_pad_id=2), dict(text_eos_id=TEXT_VOCAB), dict(rope_base=1.0), dict(mlp_ratio=0), dict(dim=32.0),
    dict(token_patch=0), dict(token_patch=4), dict(token_patch=2, chunk_height=3),
])
def test_bad_config_raises(overrides):
    with pytest.raises(ValueError):
        tiny_config(**overrides)


def test_presets_grow_and_need_vocabularies():
    sizes = [Generator(generator_config_preset(name, codebook_size=1000, text_vocab_size=256)).num_parameters()
             for name in ("tiny", "small")]
    assert sizes[0] < sizes[1]
    assert generator_config_preset("tiny", codebook_size=64, text_vocab_size=40, depth=1).depth == 1
    with pytest.raises(ValueError, match="codebook_size"):
        generator_config_preset("tiny", text_vocab_size=256)
    with pytest.raises(ValueError, match="preset"):
        generator_config_preset("huge", codebook_size=8, text_vocab_size=8)
    with pytest.raises(ValueError, match="unknown"):
        generator_config_preset("tiny", codebook_size=8, text_vocab_size=8, width=3)


# ---- attention structure ---------------------------------------------------------------------

@pytest.mark.parametrize("patch", [1, 2])
def test_block_causal_later_chunk_never_changes_earlier_logits(patch):
    model = tiny_model(token_patch=patch)
    codes, text = random_codes(2, 5), random_text(2, 5)
    codes[:, 1, 0, 0] = CODEBOOK  # mask tokens are legal input
    base = model(codes, text)
    for k in range(4):
        changed_codes, changed_text = codes.clone(), text.clone()
        changed_codes[:, k + 1] = (changed_codes[:, k + 1] + 1) % CODEBOOK
        changed_text[:, k + 1, 1] = 4 + (changed_text[:, k + 1, 1] - 3) % (TEXT_VOCAB - 4)
        out = model(changed_codes, changed_text)
        assert torch.equal(out[:, : k + 1], base[:, : k + 1])
        assert (out[:, k + 1] - base[:, k + 1]).abs().max() > 1e-3


@pytest.mark.parametrize("patch", [1, 2])
def test_bidirectional_inside_a_chunk(patch):
    model = tiny_model(token_patch=patch)
    codes, text = random_codes(1, 2), random_text(1, 2)
    changed = codes.clone()
    changed[0, 0, -1, -1] = (changed[0, 0, -1, -1] + 1) % CODEBOOK
    assert (model(changed, text)[0, 0, 0, 0] - model(codes, text)[0, 0, 0, 0]).abs().max() > 1e-3


def test_token_patch_runs_the_blocks_over_fewer_positions_and_keeps_tokens_apart(monkeypatch):
    """token_patch=2 puts a 2x2 patch of tokens in one position (4x fewer video positions), yet each token
    of a patch keeps logits of its own."""
    model = tiny_model(token_patch=2)
    codes, text = random_codes(1, 3), random_text(1, 3)
    lengths = []
    original = model.blocks[0].forward
    monkeypatch.setattr(model.blocks[0], "forward", lambda x, *rest: lengths.append(x.shape[1]) or original(x, *rest))
    logits = model(codes, text)
    assert lengths == [3 * (TEXT_LENGTH + HEIGHT * WIDTH // 4)]
    assert logits.shape == (1, 3, HEIGHT, WIDTH, CODEBOOK)
    patch = logits[0, 0, :2, :2].flatten(0, 1)  # the first patch's 4 tokens
    assert all((patch[i] - patch[0]).abs().max() > 1e-3 for i in range(1, 4))


def test_sliding_window_limits_receptive_field():
    # depth 2, window 2: a chunk sees at most 2 chunks back through the stacked layers.
    model = tiny_model(window_chunks=2)
    codes, text = random_codes(1, 5), random_text(1, 5)
    changed = codes.clone()
    changed[:, 0] = (changed[:, 0] + 1) % CODEBOOK
    base, out = model(codes, text), model(changed, text)
    assert (out[:, 2] - base[:, 2]).abs().max() > 1e-3
    assert torch.equal(out[:, 3:], base[:, 3:])


def test_new_prompt_changes_only_its_chunks_and_later():
    model = tiny_model()
    codes, text = random_codes(1, 6), random_text(1, 6)
    story = text.clone()
    story[:, 3:] = torch.tensor([2, 9, 10, 3, 0])  # prompt switch at chunk 3
    base, out = model(codes, text), model(codes, story)
    assert torch.equal(out[:, :3], base[:, :3])
    for chunk in range(3, 6):
        assert (out[:, chunk] - base[:, chunk]).abs().max() > 1e-3


def test_pad_text_positions_are_never_keys():
    model = tiny_model()
    codes, text = random_codes(2, 3), random_text(2, 3)
    base = model(codes, text)
    with torch.no_grad():
        model.embed.text.weight[0].normal_()
        model.embed.text_position[-1].normal_()  # last slot is always a pad in random_text
    assert torch.allclose(model(codes, text), base, atol=1e-6)


@pytest.mark.parametrize("window,heads", [(8, {}), (2, {}), (1, {}), (2, dict(code_levels=[4, 2, 2])),
                                          (2, dict(code_levels=[4, 2, 2], digit_head=True)),
                                          (2, dict(code_levels=[4, 2, 2], digit_head=True, token_patch=2))])
def test_cache_equals_recompute(window, heads):
    model = tiny_model(window_chunks=window, **heads)
    codes, text = random_codes(2, 6), random_text(2, 6)
    codes[0, 2, 1] = CODEBOOK
    full = model(codes, text)
    cached = model.logits_with_cache(codes, text)
    assert full.shape == (2, 6, HEIGHT, WIDTH, CODEBOOK)
    assert (full - cached).abs().max() <= 1e-4


def test_generate_matches_a_sampler_without_cache():
    """generate() (KV cache, sliding window, CFG batched) equals MaskGIT driven by full recompute."""
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
            tokens = maskgit_step(tokens, uncond + cfg_scale * (cond - uncond), CODEBOOK, step, steps, 1.0, 6,
                                  "confidence", 4.5, noise)
        decided = torch.cat([decided, tokens.view(2, 1, HEIGHT, WIDTH)], dim=1)
    sampled = model.generate(text, steps=steps, cfg_scale=cfg_scale, top_k=6, generator=seeded(3))
    assert torch.equal(sampled, decided)


# ---- sampling --------------------------------------------------------------------------------

def test_generate_is_deterministic_by_seed_and_in_range():
    model = tiny_model()
    text = random_text(2, 3)
    first = model.generate(text, steps=3, generator=seeded(0))
    again = model.generate(text, steps=3, generator=seeded(0))
    other = model.generate(text, steps=3, generator=seeded(1))
    assert first.shape == (2, 3, HEIGHT, WIDTH) and first.dtype == torch.long
    assert int(first.min()) >= 0 and int(first.max()) < CODEBOOK
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_cfg_scale_zero_and_one_are_the_single_passes():
    model = tiny_model()
    text, negative = random_text(1, 3, seed=1), random_text(1, 3, seed=2)
    null = model.null_text(1, 3)

    def sample(prompt, scale, **options):
        return model.generate(prompt, steps=3, cfg_scale=scale, generator=seeded(5), **options)

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

    monkeypatch.setattr(generator_module, "maskgit_step", recording_step)
    model.generate(text, steps=1, cfg_scale=4.0, generator=seeded(0))
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
        tokens = maskgit_step(tokens, logits, CODEBOOK, step, 4, 1.0, None, "random", 4.5, seeded(step))
        committed = previous != CODEBOOK
        assert torch.equal(tokens[committed], previous[committed])
        history.append(int((tokens[0] == CODEBOOK).sum()))
    assert history == [math.floor(12 * math.cos(math.pi / 2 * s / 4)) for s in (1, 2, 3)] + [0]
    greedy = maskgit_step(torch.full((2, 12), CODEBOOK), logits, CODEBOOK, 0, 1, 0.0, None, "confidence", 4.5, None)
    assert torch.equal(greedy, logits.argmax(-1))
    top1 = maskgit_step(torch.full((2, 12), CODEBOOK), logits, CODEBOOK, 0, 1, 5.0, 1, "confidence", 4.5, seeded(0))
    assert torch.equal(top1, logits.argmax(-1))


def test_orders_differ_and_prime_is_kept():
    model = tiny_model()
    text, prime = random_text(2, 5), random_codes(2, 2, seed=7)
    calls = []
    confident = model.generate(text, steps=4, prime_codes=prime, generator=seeded(0),
                               progress=lambda done, total: calls.append((done, total)))
    randomised = model.generate(text, steps=4, prime_codes=prime, generator=seeded(0), order="random")
    assert confident.shape == (2, 5, HEIGHT, WIDTH)
    assert torch.equal(confident[:, :2], prime) and torch.equal(randomised[:, :2], prime)
    assert not torch.equal(confident[:, 2:], randomised[:, 2:])
    assert calls == [(3, 5), (4, 5), (5, 5)]
    assert torch.equal(model.generate(text[:, :2], prime_codes=prime, generator=seeded(0)), prime)


def test_long_generation_past_training_length_with_one_prompt():
    model = tiny_model(window_chunks=3)
    codes = model.generate(random_text(1, 1)[:, 0], num_chunks=20, steps=2, generator=seeded(0))
    assert codes.shape == (1, 20, HEIGHT, WIDTH)


# ---- training --------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, dict(clean_context=False), dict(code_levels=[2, 8]),
                                       dict(code_levels=[2, 8], digit_head=True),
                                       dict(code_levels=[2, 8], digit_head=True, token_patch=2)])
def test_training_loss_gives_every_parameter_a_finite_gradient(overrides):
    model = tiny_model(**overrides)
    codes, text = random_codes(4, 3), random_text(4, 3)
    loss, logs = model.training_loss(codes, text, generator=seeded(0))
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert set(logs) >= {"loss", "masked_accuracy", "mask_ratio", "tokens"}
    assert 0 < logs["mask_ratio"] <= 1 and logs["tokens"] >= 1


def test_training_loss_randomness_comes_only_from_the_generator():
    model = tiny_model()
    codes, text = random_codes(3, 4), random_text(3, 4)
    torch.manual_seed(1)
    first, first_logs = model.training_loss(codes, text, generator=seeded(9))
    torch.manual_seed(2)
    second, second_logs = model.training_loss(codes, text, generator=seeded(9))
    third, _ = model.training_loss(codes, text, generator=seeded(10))
    assert torch.equal(first, second) and first_logs == second_logs
    assert not torch.equal(first, third)


def test_padding_chunks_get_no_loss_and_no_influence():
    model = tiny_model(clean_chunk_prob=0.0)
    codes, text = random_codes(2, 4), random_text(2, 4)
    valid = torch.tensor([[True, False, False, False], [True, True, True, False]])
    loss, logs = model.training_loss(codes, text, chunk_valid=valid, generator=seeded(0))
    garbage = codes.clone()
    garbage[0, 1:] = (garbage[0, 1:] + 3) % CODEBOOK
    garbage[1, 3] = (garbage[1, 3] + 3) % CODEBOOK
    loss_garbage, logs_garbage = model.training_loss(garbage, text, chunk_valid=valid, generator=seeded(0))
    assert torch.allclose(loss, loss_garbage) and logs == logs_garbage
    assert logs["tokens"] <= 4 * HEIGHT * WIDTH  # only the 4 valid chunks can be masked
    images = torch.tensor([[True, False, False, False]] * 2)  # images are 1-frame videos plus padding
    _, image_logs = model.training_loss(codes, text, chunk_valid=images, generator=seeded(0))
    assert 2 <= image_logs["tokens"] <= 2 * HEIGHT * WIDTH


@pytest.mark.parametrize("clean_context", [True, False])
def test_text_dropout_uses_the_null_text(monkeypatch, clean_context):
    model = tiny_model(text_dropout=0.999, clean_context=clean_context)
    codes, text = random_codes(2, 2), random_text(2, 2)
    seen = []
    original = model.embed.forward
    monkeypatch.setattr(model.embed, "forward", lambda tokens, t: seen.append(t) or original(tokens, t))
    model.training_loss(codes, text, generator=seeded(0))
    assert seen and all(torch.equal(t, model.null_text(2, 2)[:, :t.shape[1]]) for t in seen)


def test_spatial_rotary_scores_depend_on_relative_position_only():
    from tokvid.models.generator import apply_rotary, rotary_cos_sin

    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(query_at, key_at):
        (tq, rq, cq), (tk, rk, ck) = query_at, key_at
        cos, sin = rotary_cos_sin(torch.tensor([tq, tk]), 16, 10000.0, torch.tensor([rq, rk]), torch.tensor([cq, ck]))
        return float((apply_rotary(q, cos[:1], sin[:1]) * apply_rotary(k, cos[1:], sin[1:])).sum())

    base = score((3, 2, 5), (2, 1, 4))
    assert math.isclose(base, score((7, 0, 1), (6, -1, 0)), abs_tol=1e-5)  # same offsets elsewhere
    assert not math.isclose(base, score((3, 2, 5), (2, 1, 5)), abs_tol=1e-3)  # other column offset
    assert not math.isclose(base, score((3, 2, 5), (2, 2, 4)), abs_tol=1e-3)  # other row offset


@pytest.mark.parametrize("window,patch", [(2, 1), (3, 1), (8, 1), (3, 2)])
def test_clean_context_training_sees_what_sampling_sees(window, patch):
    """Chunk c's training logits equal the cache path fed the clean chunks < c and masked chunk c."""
    model = tiny_model(window_chunks=window, token_patch=patch)
    clean, text = random_codes(2, 5), random_text(2, 5)
    hide = torch.rand(clean.shape, generator=seeded(3)) < 0.5
    masked = clean.masked_fill(hide, model.config.mask_id)
    with torch.no_grad():
        hidden = model._clean_context_hidden(clean.flatten(2), masked.flatten(2), text, window)
        training_logits = model.head(hidden).view(2, 5, HEIGHT, WIDTH, -1)
    for chunk in range(5):
        inputs = torch.cat([clean[:, :chunk], masked[:, chunk:chunk + 1]], dim=1)
        sampling_logits = model.logits_with_cache(inputs, text[:, :chunk + 1])[:, chunk]
        assert torch.allclose(training_logits[:, chunk], sampling_logits, atol=1e-5), chunk
    # ... and the masked-everywhere mode does not (its context is masked too)
    with torch.no_grad():
        masked_context = model.head(model._video_hidden(masked.flatten(2), text, window)).view(2, 5, HEIGHT, WIDTH, -1)
    assert not torch.allclose(masked_context[:, 1:], training_logits[:, 1:], atol=1e-3)


def test_digit_head_is_a_normalised_product_of_digit_distributions():
    """With a digit head, logits are log-probs whose cross-entropy is the digits' summed cross-entropies,
    and digits follow the FSQ index layout of vector-quantize-pytorch (first level least significant)."""
    from vector_quantize_pytorch import FSQ

    from tokvid.models.generator import digit_rows

    levels = [4, 4]
    codes = torch.arange(16)
    first_rows = torch.tensor([0, 4])
    assert torch.equal(digit_rows(levels) - first_rows, FSQ(levels).indices_to_level_indices(codes).long())
    model = tiny_model(code_levels=levels, digit_head=True)
    hidden = torch.randn(7, model.config.dim)
    logits = model._logits(hidden)
    assert logits.shape == (7, CODEBOOK)
    assert torch.allclose(logits.logsumexp(dim=-1), torch.zeros(7), atol=1e-5)
    targets = torch.randint(0, CODEBOOK, (7,), generator=seeded(1))
    loss, predicted = model._cross_entropy(hidden, targets)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, reduction="none"), atol=1e-5)
    assert torch.equal(predicted, logits.argmax(dim=-1))
    assert model.head.out_features == sum(levels)  # the head is per digit, not per code
    assert tiny_model(code_levels=levels).head.out_features == CODEBOOK  # digit embedding, one softmax


def test_digit_mixture_is_a_normalised_mixture_that_can_bind_digits():
    """A K-component digit head gives exactly normalised log-probs, its loss is their cross-entropy, and,
    unlike one product, it can put its mass on two codes that share no digit (0 = (0,0) and 15 = (3,3))
    without giving the mixed codes (0,3) and (3,0) the same share."""
    levels = [4, 4]
    model = tiny_model(code_levels=levels, digit_head=True, digit_mixture=3)
    assert model.head.out_features == 3 * sum(levels) + 3
    hidden = torch.randn(7, model.config.dim)
    logits = model._logits(hidden)
    assert torch.allclose(logits.logsumexp(dim=-1), torch.zeros(7), atol=1e-5)
    targets = torch.randint(0, CODEBOOK, (7,), generator=seeded(1))
    loss, predicted = model._cross_entropy(hidden, targets)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, reduction="none"), atol=1e-5)
    assert predicted.shape == targets.shape

    def fitted_probs(components: int) -> torch.Tensor:
        torch.manual_seed(0)
        fitted = Generator(tiny_config(code_levels=levels, digit_head=True, digit_mixture=components))
        state = torch.randn(1, fitted.config.dim)
        optimizer = torch.optim.SGD(fitted.head.parameters(), lr=0.02)
        two_codes = torch.tensor([0, 15]).repeat(8)
        for _ in range(1500):  # the components start alike; they take a while to part
            optimizer.zero_grad()
            fitted._cross_entropy(state.expand(16, -1), two_codes)[0].mean().backward()
            optimizer.step()
        return fitted._logits(state)[0].exp().detach()

    mixture, product = fitted_probs(2), fitted_probs(1)
    assert mixture[0] + mixture[15] > 0.95 and mixture[3] + mixture[12] < 0.05
    assert product[0] + product[15] < 0.55 and product[3] + product[12] > 0.45  # a product must mix the digits


def test_widened_digit_head_starts_near_its_one_product_start():
    from tokvid.models.generator import widen_digit_head

    levels = [4, 4]
    start = tiny_model(code_levels=levels, digit_head=True)
    widened = tiny_model(code_levels=levels, digit_head=True, digit_mixture=4)
    state = start.state_dict()
    state["head.weight"] = widen_digit_head(state["head.weight"], 4, seed=3)
    widened.load_state_dict(state)
    assert torch.equal(state["head.weight"], widen_digit_head(start.head.weight, 4, seed=3))  # same on every rank
    hidden = torch.randn(5, start.config.dim)
    start_probs, widened_probs = start._logits(hidden).exp(), widened._logits(hidden).exp().detach()
    assert (start_probs - widened_probs).abs().sum(dim=-1).max() < 0.5  # close, but ...
    assert not torch.allclose(start_probs, widened_probs, atol=1e-4)  # ... nudged apart, so components can part
    with pytest.raises(ValueError, match="components >= 2"):
        widen_digit_head(start.head.weight, 1)


@pytest.mark.parametrize("patch", [1, 2])
def test_tiny_training_run_learns_far_above_chance(patch):
    torch.manual_seed(0)
    model = Generator(tiny_config(window_chunks=2, clean_chunk_prob=0.25, token_patch=patch))
    data = seeded(0)
    patterns = torch.randint(0, CODEBOOK, (4, HEIGHT, WIDTH), generator=data)
    clips = torch.stack([(patterns[k] + torch.arange(4)[:, None, None]) % CODEBOOK for k in range(4)])
    text = torch.tensor([[2, 4 + k, 3, 0, 0] for k in range(4)])[:, None].expand(-1, 4, -1)
    train_tiny(model, clips, text, data, steps=250)
    with torch.no_grad():
        accuracy = sum(model.training_loss(clips, text, generator=seeded(s))[1]["masked_accuracy"] for s in range(8)) / 8
    assert accuracy > 6 / CODEBOOK  # chance is 1/16


def test_first_chunk_candidates_keep_the_most_prompt_specific_first_chunk_and_sample_later_chunks_once(monkeypatch):
    model = tiny_model()
    text = random_text(2, 3)
    candidates = [random_codes(2, 1, seed=s)[:, 0].flatten(1) for s in (1, 2, 3)]
    later = random_codes(2, 1, seed=9)[:, 0].flatten(1)
    calls = []

    def prescribed(chunk_index, stream_text, cache, num_streams, batch, *args, **kwargs):
        calls.append((chunk_index, batch))
        return torch.cat(candidates) if chunk_index == 0 else later  # candidates come as one batch

    monkeypatch.setattr(model, "_sample_chunk", prescribed)
    codes = model.generate(text, steps=2, first_chunk_candidates=3, generator=seeded(0))
    assert calls == [(0, 6), (1, 2), (2, 2)]
    null = model.null_text(2, 1)[:, 0]
    with torch.no_grad():
        scores = torch.stack([model.first_chunk_log_likelihood(candidate, text[:, 0])
                              - model.first_chunk_log_likelihood(candidate, null) for candidate in candidates])
    assert scores.unique().numel() == scores.numel()  # the choice is not a tie
    for row, best in enumerate(scores.argmax(dim=0).tolist()):
        assert torch.equal(codes[row, 0].flatten(), candidates[best][row])
        assert all(torch.equal(codes[row, chunk].flatten(), later[row]) for chunk in (1, 2))


def recomputed_chunk_log_likelihood(model, past, chunk, text):
    """Summed checkerboard log-probability (B,) of chunk (B, N) after decided past chunks (B, c, N) under text
    (B, c+1, L), from full forward passes (the other route to what the cache path computes)."""
    rows = torch.arange(HEIGHT)[:, None]
    cols = torch.arange(WIDTH)[None, :]
    black = ((rows + cols) % 2 == 0).flatten()
    total = torch.zeros(chunk.shape[0])
    for hidden_half in (black, ~black):
        sequence = torch.cat([past, chunk.masked_fill(hidden_half, model.config.mask_id)[:, None]], dim=1)
        logits = model(sequence.view(chunk.shape[0], -1, HEIGHT, WIDTH), text)[:, -1].flatten(1, 2)
        log_probs = logits.log_softmax(dim=-1).gather(-1, chunk[..., None])[..., 0]
        total += (log_probs * hidden_half).sum(dim=-1)
    return total


@pytest.mark.parametrize("negative", [False, True])
def test_later_chunk_candidates_keep_the_one_the_prompt_explains_given_the_past(monkeypatch, negative):
    model = tiny_model(window_chunks=3)
    text = random_text(2, 3)
    uncond = random_text(2, 3, seed=5) if negative else model.null_text(2, 3)
    first = random_codes(2, 1, seed=4)[:, 0].flatten(1)
    candidates = {chunk: [random_codes(2, 1, seed=10 * chunk + s)[:, 0].flatten(1) for s in range(3)]
                  for chunk in (1, 2)}
    calls = []

    def prescribed(chunk_index, stream_text, cache, num_streams, batch, *args, **kwargs):
        calls.append((chunk_index, batch))
        return first if chunk_index == 0 else torch.cat(candidates[chunk_index])

    monkeypatch.setattr(model, "_sample_chunk", prescribed)
    codes = model.generate(text, steps=2, cfg_scale=2.0, later_chunk_candidates=3,
                           negative_text=uncond if negative else None).flatten(2)
    assert calls == [(0, 2), (1, 6), (2, 6)]
    assert torch.equal(codes[:, 0], first)
    with torch.no_grad():
        for chunk in (1, 2):
            past = codes[:, :chunk]
            scores = torch.stack([recomputed_chunk_log_likelihood(model, past, candidate, text[:, :chunk + 1])
                                  - LATER_CANDIDATE_UNCOND_WEIGHT
                                  * recomputed_chunk_log_likelihood(model, past, candidate, uncond[:, :chunk + 1])
                                  for candidate in candidates[chunk]])
            assert scores.unique().numel() == scores.numel()  # the choice is not a tie
            for row, best in enumerate(scores.argmax(dim=0).tolist()):
                assert torch.equal(codes[row, chunk], candidates[chunk][best][row])


@pytest.mark.parametrize("patch", [1, 2])
def test_chunk_log_likelihood_prefers_the_first_chunk_a_tiny_model_learned(patch):
    torch.manual_seed(0)
    model = Generator(tiny_config(window_chunks=1, token_patch=patch))
    data = seeded(0)
    patterns = torch.randint(0, CODEBOOK, (4, 1, HEIGHT, WIDTH), generator=data)
    text = torch.tensor([[2, 4 + k, 3, 0, 0] for k in range(4)])[:, None]
    train_tiny(model, patterns, text, data, steps=150)
    with torch.no_grad():
        learned = model.first_chunk_log_likelihood(patterns.flatten(1), text[:, 0])
        other = model.first_chunk_log_likelihood(patterns.roll(1, dims=0).flatten(1), text[:, 0])  # another prompt's
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
    monkeypatch.setattr(model, "_sample_chunk", lambda *args, **kwargs: candidates)
    with torch.no_grad():
        chosen = model.generate(text[:, 0], num_chunks=1, first_chunk_candidates=2)
        gain = model.first_chunk_log_likelihood(common[:, 0].flatten(1), text[:, 0]) \
            - model.first_chunk_log_likelihood(own[:, 0].flatten(1), text[:, 0])
    assert torch.equal(chosen, own)
    assert (gain > 0).any()  # the likelihood under the prompt alone would have kept the common chunk


# ---- persistence -----------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [{}, dict(code_levels=[4, 4]), dict(code_levels=[4, 4], digit_head=True),
                                   dict(code_levels=[4, 4], digit_head=True, digit_mixture=3),
                                   dict(code_levels=[4, 4], digit_head=True, token_patch=2)])
def test_save_load_reproduces_samples(tmp_path, heads):
    model = tiny_model(window_chunks=2, **heads)
    text = random_text(1, 3)
    model.save_pretrained(tmp_path / "gen")
    loaded = Generator.from_pretrained(tmp_path / "gen")
    assert loaded.config == model.config and loaded.num_parameters() == model.num_parameters()
    assert torch.equal(model.generate(text, steps=3, generator=seeded(4)), loaded.generate(text, steps=3, generator=seeded(4)))


def test_sampling_draws_only_codes_the_training_data_has():
    """code_counts (recorded by training) limits what generate draws to codes seen min_code_count times;
    0, or a generator whose counts were never recorded, draws from every code."""
    model = tiny_model()
    text = random_text(2, 3)

    def drawn(**options) -> set[int]:
        return set(model.generate(text, steps=2, temperature=2.0, generator=seeded(1), **options).flatten().tolist())

    everything = drawn()  # nothing recorded: every code may come out
    assert len(everything) > 8
    counts = torch.zeros(CODEBOOK, dtype=torch.long)
    counts[[1, 4, 9, 12]] = torch.tensor([1, 5, 5, 20])
    model.code_counts.copy_(counts)
    assert drawn() <= {1, 4, 9, 12} and drawn(min_code_count=5) <= {4, 9, 12} and drawn(min_code_count=20) == {12}
    assert drawn(min_code_count=0) == everything  # the restriction is the only change
    with pytest.raises(ValueError, match="excludes every code"):
        model.generate(text, min_code_count=21)


def test_code_counts_survive_save_and_load_and_old_files_load_without_them(tmp_path):
    from safetensors.torch import load_file, save_file

    model = tiny_model()
    model.code_counts.copy_(torch.arange(CODEBOOK))
    model.save_pretrained(tmp_path / "gen")
    assert torch.equal(Generator.from_pretrained(tmp_path / "gen").code_counts, torch.arange(CODEBOOK))
    weights_path = tmp_path / "gen" / "model.safetensors"
    old = {key: value for key, value in load_file(str(weights_path)).items() if key != "code_counts"}
    save_file(old, str(weights_path))  # as saved before counts were recorded
    loaded = Generator.from_pretrained(tmp_path / "gen")
    assert not loaded.code_counts.any()
    text = random_text(1, 2)
    assert torch.equal(loaded.generate(text, steps=2, generator=seeded(0)),
                       loaded.generate(text, steps=2, generator=seeded(0), min_code_count=0))


def test_load_rejects_missing_foreign_and_mismatched_dirs(tmp_path):
    with pytest.raises(ValueError, match="not a generator directory"):
        Generator.from_pretrained(tmp_path / "nothing")
    model = tiny_model()
    model.save_pretrained(tmp_path / "gen")
    config_path = tmp_path / "gen" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "bogus_field": 1}))
    with pytest.raises(ValueError, match="bogus_field"):
        Generator.from_pretrained(tmp_path / "gen")
    config_path.write_text(json.dumps({**config, "model_type": "video_tokenizer"}))
    with pytest.raises(ValueError, match="not a generator"):
        Generator.from_pretrained(tmp_path / "gen")
    config_path.write_text(json.dumps({**config, "dim": 64}))
    with pytest.raises(ValueError, match="does not fit"):
        Generator.from_pretrained(tmp_path / "gen")


def test_a_config_saved_before_later_fields_loads_with_their_old_behaviour(tmp_path):
    model = tiny_model(code_levels=[4, 4], digit_head=True)
    model.save_pretrained(tmp_path / "gen")
    config_path = tmp_path / "gen" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({key: value for key, value in config.items()
                                       if key not in generator_module.LATER_FIELDS}))
    loaded = Generator.from_pretrained(tmp_path / "gen")
    assert loaded.config == model.config and loaded.config.digit_mixture == 1 and loaded.config.token_patch == 1


# ---- bad input -------------------------------------------------------------------------------

def test_bad_inputs_raise_value_error():
    model = tiny_model()
    codes, text = random_codes(1, 2), random_text(1, 2)
    bad_calls = [
        lambda: model.training_loss(codes + CODEBOOK, text),                  # codes out of range
        lambda: model.training_loss(codes - 1, text),
        lambda: model.training_loss(codes.float(), text),                     # not integer
        lambda: model.training_loss(codes[..., :2], text),                    # wrong grid
        lambda: model.training_loss(codes, text[..., :3]),                    # text length mismatch
        lambda: model.training_loss(codes, text[:, :1]),                      # text chunks mismatch
        lambda: model.training_loss(codes, text + TEXT_VOCAB),                # text ids out of range
        lambda: model.training_loss(codes, text, chunk_valid=torch.tensor([[False, True]])),
        lambda: model.training_loss(codes, text, chunk_valid=torch.tensor([[False, False]])),
        lambda: model.training_loss(codes, text, chunk_valid=torch.tensor([True, True])),
        lambda: model(codes + CODEBOOK + 1, text),                            # beyond the mask id
        lambda: model(codes[0], text),
        lambda: model.generate(text, steps=0),
        lambda: model.generate(text, cfg_scale=-1.0),
        lambda: model.generate(text, temperature=-0.5),
        lambda: model.generate(text, top_k=0),
        lambda: model.generate(text, order="halton"),
        lambda: model.generate(text, window_chunks=0),
        lambda: model.generate(text, num_chunks=0),
        lambda: model.generate(text, num_chunks=3),                           # (B,n,L) with n != num_chunks
        lambda: model.generate(text[:, 0]),                                   # (B,L) without num_chunks
        lambda: model.generate(text, negative_text=text[..., :2]),
        lambda: model.generate(text, prime_codes=random_codes(1, 3)),         # more prime than chunks
        lambda: model.generate(text, prime_codes=random_codes(2, 1)),         # batch mismatch
        lambda: model.generate(text, prime_codes=codes + CODEBOOK),           # mask id not a code
        lambda: model.generate(text, first_chunk_candidates=0),
        lambda: model.generate(text, first_chunk_candidates=2.0),
        lambda: model.generate(text, later_chunk_candidates=0),
        lambda: model.generate(text, later_chunk_candidates=2, cfg_scale=1.0),  # needs both guidance streams
        lambda: model.generate(text, later_chunk_candidates=2, cfg_scale=0),
        lambda: model.generate(text, min_code_count=-1),
        lambda: model.generate(text, min_code_count=1.5),
    ]
    for number, call in enumerate(bad_calls):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {number} did not raise")


@pytest.mark.parametrize("candidates", [{}, dict(first_chunk_candidates=3, later_chunk_candidates=2)])
def test_sampling_without_cache_gives_the_same_codes(candidates):
    torch.manual_seed(0)
    model = Generator(tiny_config(window_chunks=3)).eval()
    text = torch.randint(4, TEXT_VOCAB, (2, 5, TEXT_LENGTH))
    kwargs = dict(num_chunks=5, steps=3, cfg_scale=2.0, temperature=1.0, **candidates)
    cached = model.generate(text, generator=torch.Generator().manual_seed(7), **kwargs)
    recomputed = model.generate(text, generator=torch.Generator().manual_seed(7), use_cache=False, **kwargs)
    assert torch.equal(cached, recomputed)
