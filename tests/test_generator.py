import json
import math

import pytest
import torch
import torch.nn.functional as F

from tiny_generator import (CODEBOOK, HEIGHT, TEXT_LENGTH, TEXT_VOCAB, WIDTH, generate, random_codes,  # noqa: F401
                            random_text, seeded, tiny_config, tiny_model, train_tiny)
from tokvid.models.generator import Generator, generator_config_preset


# ---- configuration ---------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [
    dict(codebook_size=1), dict(text_length=1), dict(dim=30, heads=4), dict(dim=36, heads=4),
    dict(window_chunks=0), dict(text_dropout=1.0), dict(dim=24, heads=2), dict(code_levels=[4, 3]),
    dict(code_levels=[16, 1]), dict(code_levels=[]), dict(digit_head=True), dict(code_levels=[4, 4], digit_head=1),
    dict(depth=0),
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


# ---- training --------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides", [{}, dict(code_levels=[2, 8]),
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
    model = tiny_model()
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


def test_text_dropout_uses_the_null_text(monkeypatch):
    model = tiny_model(text_dropout=0.999)
    codes, text = random_codes(2, 2), random_text(2, 2)
    seen = []
    original = model.embed.forward
    monkeypatch.setattr(model.embed, "forward", lambda tokens, t: seen.append(t) or original(tokens, t))
    model.training_loss(codes, text, generator=seeded(0))
    assert seen and all(torch.equal(t, model.null_text(2, 2)[:, :t.shape[1]]) for t in seen)


def test_rotary_scores_depend_on_relative_time_row_and_column_only():
    from tokvid.models.generator import apply_rotary, rotary_cos_sin

    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(query_at, key_at):
        (tq, rq, cq), (tk, rk, ck) = query_at, key_at
        cos, sin = rotary_cos_sin(torch.tensor([tq, tk]), torch.tensor([rq, rk]), torch.tensor([cq, ck]), 16, 10000.0)
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
        hidden = model._clean_context_states(clean.flatten(2), masked.flatten(2), text)
        training_logits = model.head(hidden).view(2, 5, HEIGHT, WIDTH, -1)
    for chunk in range(5):
        inputs = torch.cat([clean[:, :chunk], masked[:, chunk:chunk + 1]], dim=1)
        sampling_logits = model.logits_with_cache(inputs, text[:, :chunk + 1])[:, chunk]
        assert torch.allclose(training_logits[:, chunk], sampling_logits, atol=1e-5), chunk
    # ... and one pass over the masked chunks does not (its context would be masked too)
    with torch.no_grad():
        masked_context = model.head(model.video_states(masked.flatten(2), text, window)).view(2, 5, HEIGHT, WIDTH, -1)
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
    logits = model.logits(hidden)
    assert logits.shape == (7, CODEBOOK)
    assert torch.allclose(logits.logsumexp(dim=-1), torch.zeros(7), atol=1e-5)
    targets = torch.randint(0, CODEBOOK, (7,), generator=seeded(1))
    loss, predicted = model._cross_entropy(hidden, targets)
    assert torch.allclose(loss, F.cross_entropy(logits, targets, reduction="none"), atol=1e-5)
    assert torch.equal(predicted, logits.argmax(dim=-1))
    assert model.head.out_features == sum(levels)  # the head is per digit, not per code
    assert tiny_model(code_levels=levels).head.out_features == CODEBOOK  # digit embedding, one softmax


def test_digit_head_logits_equal_the_per_code_sum_of_digit_rows_bit_for_bit():
    """logits' outer sum makes exactly the additions of summing each code's digit rows, in the same order,
    so sampled videos stay as they were (tests/test_golden.py holds whole videos)."""
    from tokvid.models.generator import digit_rows

    levels = [4, 2, 2]  # CODEBOOK 16, uneven levels
    model = tiny_model(code_levels=levels, digit_head=True)
    hidden = torch.randn(2, 9, model.config.dim, generator=seeded(2))
    with torch.no_grad():
        rows = torch.cat(model._digit_log_probs(hidden), dim=-1)
        reference = sum(rows[..., digit_rows(levels)[:, i]] for i in range(len(levels)))
        assert torch.equal(model.logits(hidden), reference)


@pytest.mark.parametrize("patch", [1, 2])
def test_tiny_training_run_learns_far_above_chance(patch):
    torch.manual_seed(0)
    model = Generator(tiny_config(window_chunks=2, token_patch=patch))
    data = seeded(0)
    patterns = torch.randint(0, CODEBOOK, (4, HEIGHT, WIDTH), generator=data)
    clips = torch.stack([(patterns[k] + torch.arange(4)[:, None, None]) % CODEBOOK for k in range(4)])
    text = torch.tensor([[2, 4 + k, 3, 0, 0] for k in range(4)])[:, None].expand(-1, 4, -1)
    train_tiny(model, clips, text, data, steps=250)
    with torch.no_grad():
        accuracy = sum(model.training_loss(clips, text, generator=seeded(s))[1]["masked_accuracy"] for s in range(8)) / 8
    assert accuracy > 6 / CODEBOOK  # chance is 1/16


# ---- persistence -----------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [{}, dict(code_levels=[4, 4]), dict(code_levels=[4, 4], digit_head=True),
                                   dict(code_levels=[4, 4], digit_head=True, token_patch=2)])
def test_save_load_reproduces_samples(tmp_path, heads):
    model = tiny_model(window_chunks=2, **heads)
    text = random_text(1, 3)
    model.save_pretrained(tmp_path / "gen")
    loaded = Generator.from_pretrained(tmp_path / "gen")
    assert loaded.config == model.config and loaded.num_parameters() == model.num_parameters()
    assert torch.equal(generate(model, text, steps=3, generator=seeded(4)), generate(loaded, text, steps=3, generator=seeded(4)))


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
    assert torch.equal(generate(loaded, text, steps=2, generator=seeded(0)),
                       generate(loaded, text, steps=2, generator=seeded(0), min_code_count=0))


def test_load_rejects_missing_foreign_and_mismatched_dirs(tmp_path):
    with pytest.raises(ValueError, match="is not a generator directory"):
        Generator.from_pretrained(tmp_path / "nothing")
    model = tiny_model()
    model.save_pretrained(tmp_path / "gen")
    config_path = tmp_path / "gen" / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "bogus_field": 1}))
    with pytest.raises(ValueError, match="bogus_field"):
        Generator.from_pretrained(tmp_path / "gen")
    config_path.write_text(json.dumps({**config, "format": "tokvid-video-tokenizer-v1"}))
    with pytest.raises(ValueError, match="not a generator"):
        Generator.from_pretrained(tmp_path / "gen")
    config_path.write_text(json.dumps({**config, "dim": 64}))
    with pytest.raises(ValueError, match="do not fit"):
        Generator.from_pretrained(tmp_path / "gen")


def test_a_config_saved_by_an_older_release_loads_with_its_old_behaviour(tmp_path):
    """As the bundled generator was written: tagged with model_type, without token_patch, with the since
    retired fields at the values kept; a retired field at another value is refused."""
    model = tiny_model(code_levels=[4, 4], digit_head=True)
    model.save_pretrained(tmp_path / "gen")
    config_path = tmp_path / "gen" / "config.json"
    config = json.loads(config_path.read_text())
    del config["format"], config["token_patch"]
    config.update(model_type="tokvid_generator", spatial_rotary=True, clean_context=True, clean_chunk_prob=0.25,
                  digit_mixture=1)
    config_path.write_text(json.dumps(config))
    loaded = Generator.from_pretrained(tmp_path / "gen")
    assert loaded.config == model.config and loaded.config.token_patch == 1
    for field, value in (("digit_mixture", 3), ("clean_context", False), ("spatial_rotary", False)):
        config_path.write_text(json.dumps({**config, field: value}))
        with pytest.raises(ValueError, match=f"{field}, an option retired"):
            Generator.from_pretrained(tmp_path / "gen")


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
    ]
    for number, call in enumerate(bad_calls):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call {number} did not raise")
