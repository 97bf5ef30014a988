import json
import math
import subprocess
import sys

import pytest
import torch

from tokvid.models.video_tokenizer import (ENCODER_MODULES, VideoTokenizer, VideoTokenizerConfig, clamped_error,
                                    neighbour_codes, video_tokenizer_preset)


def tiny(**overrides) -> VideoTokenizer:
    torch.manual_seed(0)
    return VideoTokenizer(video_tokenizer_preset("tiny", **overrides)).eval()


def random_video(frames: int, height: int = 32, width: int = 32, batch: int = 1, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, frames, height, width, generator=generator) * 2 - 1


@pytest.fixture(scope="module")
def tok():
    return tiny()


def test_shapes_and_vocab(tok):
    codes = tok.encode(random_video(9, 32, 48, batch=2))
    assert codes.dtype == torch.long and codes.shape == (2, 3, 4, 6)
    assert int(codes.min()) >= 0 and int(codes.max()) < tok.vocab_size == 125
    video = tok.decode(codes)
    assert video.shape == (2, 3, 9, 32, 48) and video.abs().max() <= 1


@pytest.mark.parametrize("quantizer", ["fsq", "lfq", "vq"])
def test_encode_is_causal_for_every_prefix(quantizer):
    tok = tiny(quantizer=quantizer, codebook_size=64, vq_codebook_dim=4)
    x = random_video(1 + 4 * 5)
    codes = tok.encode(x)
    for k in range(6):
        assert torch.equal(tok.encode(x[:, :, : 1 + 4 * k]), codes[:, : 1 + k]), f"prefix k={k}"


def test_image_is_first_latent_frame(tok):
    x = random_video(13)
    assert torch.equal(tok.encode(x[:, :, :1]), tok.encode(x)[:, :1])


def test_changing_future_frames_never_changes_past_codes(tok):
    x = random_video(17)
    y = x.clone()
    y[:, :, 9:] = -y[:, :, 9:]
    a, b = tok.encode(x), tok.encode(y)
    assert torch.equal(a[:, :3], b[:, :3])
    assert not torch.equal(a[:, 3:], b[:, 3:])


def test_chunked_coding_of_65_frames_equals_whole_clip():
    tok = tiny(latent_blocks=2)
    x = random_video(65, 32, 40)
    whole = tok.encode(x)
    assert whole.shape[1] == 17
    for chunk in (1, 3, 5, 16):
        assert torch.equal(tok.encode(x, chunk_latents=chunk), whole), f"chunk={chunk}"
    decoded = tok.decode(whole)
    for chunk in (1, 4, 7):
        assert torch.allclose(tok.decode(whole, chunk_latents=chunk), decoded, atol=1e-5), f"chunk={chunk}"


def test_save_load_gives_identical_codes(tok, tmp_path):
    x = random_video(9)
    tok.save_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["temporal_compression"] == 4
    again = VideoTokenizer.from_pretrained(tmp_path / "tok")
    assert torch.equal(again.encode(x), tok.encode(x))
    assert again.fingerprint() == tok.fingerprint()


def test_config_mismatch_fails_clearly(tok, tmp_path):
    tok.save_pretrained(tmp_path / "tok")
    config = json.loads((tmp_path / "tok" / "config.json").read_text())
    config["wavelet_levels"] = 3
    (tmp_path / "tok" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not know"):
        VideoTokenizer.from_pretrained(tmp_path / "tok")
    config.pop("wavelet_levels")
    config["latent_channels"] = 24
    (tmp_path / "tok" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="do not fit"):
        VideoTokenizer.from_pretrained(tmp_path / "tok")


def test_unknown_name_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match="unknown tokenizer"):
        VideoTokenizer.from_pretrained("no-such-model")
    with pytest.raises(ValueError):
        VideoTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 3, 8, 32, 32), "1 \\+ k\\*4"),
    (torch.zeros(1, 3, 9, 30, 32), "multiple of 8"),
    (torch.zeros(1, 1, 9, 32, 32), "B,3,T,H,W"),
    (torch.full((1, 3, 9, 32, 32), 3.0), "\\[-1, 1\\]"),
    (torch.zeros(1, 3, 9, 32, 32, dtype=torch.uint8), "float"),
])
def test_bad_video_input_raises_value_error(tok, bad, message):
    with pytest.raises(ValueError, match=message):
        tok.encode(bad)


def test_bad_codes_raise_value_error(tok):
    with pytest.raises(ValueError, match="codes must lie"):
        tok.decode(torch.full((1, 2, 4, 4), tok.vocab_size))
    with pytest.raises(ValueError, match="integer codes"):
        tok.decode(torch.zeros(1, 2, 4, 4))


def test_fingerprints_hash_configs_as_the_first_shards_saw_them(tmp_path):
    """Token shards record fingerprints: a field added to the config later must not invalidate shards
    written before it existed (at the value that behaves as before), nor may a field's retirement."""
    import hashlib
    from dataclasses import asdict

    tok = tiny()
    tok.save_pretrained(tmp_path / "tok")
    config_path = tmp_path / "tok" / "config.json"
    saved = json.loads(config_path.read_text())
    del saved["clamped_loss"]  # as written before the field existed, with the since retired fields
    saved.update(encoder_spatial_kernel=3, l1_weight=0.0, gradient_weight=0.0)
    config_path.write_text(json.dumps(saved))
    old = VideoTokenizer.from_pretrained(tmp_path / "tok")

    def digest(model: VideoTokenizer) -> str:
        config = {k: v for k, v in asdict(model.config).items() if k != "clamped_loss"}
        config.update(l1_weight=0.0, gradient_weight=0.0)
        hashed = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for key, value in sorted(model.state_dict().items()):
            hashed.update(key.encode())
            hashed.update(value.numpy().tobytes())
        return hashed.hexdigest()[:16]

    # as computed when the first shards were written: the config of that time, then every tensor
    assert old.fingerprint() == tok.fingerprint() == digest(old)
    assert tiny(clamped_loss=True).fingerprint() != tok.fingerprint()  # a value that behaves differently counts
    saved["encoder_spatial_kernel"] = 1  # a retired option at another value than the one kept is refused
    config_path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="encoder_spatial_kernel, an option retired"):
        VideoTokenizer.from_pretrained(tmp_path / "tok")


def test_config_validation():
    with pytest.raises(ValueError, match="frame_channels"):
        VideoTokenizerConfig(frame_channels=(8,))
    with pytest.raises(ValueError, match="quantizer"):
        VideoTokenizerConfig(quantizer="rvq")
    with pytest.raises(ValueError, match="power-of-two"):
        VideoTokenizerConfig(quantizer="lfq", codebook_size=1000)
    with pytest.raises(ValueError, match="preset"):
        video_tokenizer_preset("huge")
    with pytest.raises(ValueError, match="clamped_loss"):
        VideoTokenizerConfig(clamped_loss="yes")


def test_every_parameter_gets_a_gradient_and_no_nan():
    tok = tiny().train()
    loss, logs = tok.training_loss(random_video(9, batch=2))
    loss.backward()
    assert torch.isfinite(loss)
    for name, parameter in tok.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name
    assert 0 < logs["codebook_usage"] <= 1 and logs["perplexity"] >= 1


def test_tiny_training_lowers_the_loss():
    torch.manual_seed(0)
    tok = tiny().train()
    # smooth moving blobs: learnable in a few dozen steps
    grid = torch.linspace(-1, 1, 32)
    frames = []
    for t in range(9):
        yy, xx = torch.meshgrid(grid, grid - 0.8 + 0.2 * t, indexing="ij")
        frames.append(torch.stack([torch.exp(-(yy ** 2 + xx ** 2) * 3)] * 3) * 2 - 1)
    x = torch.stack(frames, dim=1)[None].repeat(2, 1, 1, 1, 1)
    optimizer = torch.optim.AdamW(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = tok.training_loss(x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def test_code_noise_moves_one_digit_by_one_step_in_the_asked_share_of_tokens():
    cfg = video_tokenizer_preset("tiny", fsq_levels=(7, 5, 3))
    codes = torch.randint(105, (4, 5, 8, 8), generator=torch.Generator().manual_seed(0))
    noisy = neighbour_codes(codes, cfg, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, neighbour_codes(codes, cfg, 0.3, torch.Generator().manual_seed(1)))  # seeded
    assert torch.equal(neighbour_codes(codes, cfg, 0.0), codes)
    slipped = noisy != codes
    assert 0.25 < slipped.float().mean() < 0.35 and int(noisy.min()) >= 0 and int(noisy.max()) < 105

    def digits(c):
        return torch.stack([c % 7, c // 7 % 5, c // 35], dim=-1)

    steps = (digits(noisy) - digits(codes)).abs()
    assert torch.equal(steps.sum(-1), slipped.long())  # exactly one digit, exactly one step
    quantizer = VideoTokenizer(cfg).quantizer  # and the digits are the quantizer's own channels
    changed = (quantizer.codes_to_latents(noisy) - quantizer.codes_to_latents(codes)).abs() > 1e-6
    assert torch.equal(changed.sum(-1), slipped.long())
    all_low = torch.zeros(1000, dtype=torch.long)  # every digit at the bottom of its range: slips go up
    assert bool((neighbour_codes(all_low, cfg, 1.0) > 0).all())
    with pytest.raises(ValueError, match="FSQ"):
        neighbour_codes(codes, video_tokenizer_preset("tiny", quantizer="lfq", codebook_size=64), 0.1)
    with pytest.raises(ValueError, match="probability"):
        neighbour_codes(codes, cfg, 1.5)


def test_code_noise_changes_what_the_decoder_sees_but_not_the_codes_and_trains_everything():
    tok = tiny().train()
    x = random_video(9, batch=2)
    clean, clean_logs = tok.training_loss(x)
    noisy, noisy_logs = tok.training_loss(x, code_noise=0.5, generator=torch.Generator().manual_seed(0))
    assert float(noisy) != float(clean) and noisy_logs["perplexity"] == clean_logs["perplexity"]
    noisy.backward()
    assert all(parameter.grad is not None and parameter.grad.abs().sum() > 0 for parameter in tok.parameters())


def test_clamped_loss_scores_the_output_as_decode_clamps_it_and_keeps_the_codes_fingerprint():
    recon = torch.tensor([-1.5, -0.5, 1.3, 0.7, -1.5, 0.4], requires_grad=True)
    target = torch.tensor([-1.0, -1.0, 1.0, 1.0, 0.2, 0.1])
    error = clamped_error(recon, target)
    # overshooting an end costs nothing; missing it, or any target inside, is the plain error
    assert torch.allclose(error, torch.tensor([0.0, 0.5, 0.0, -0.3, -1.7, 0.3]))
    error.pow(2).sum().backward()
    assert recon.grad[4] != 0  # an output stuck beyond the wrong end is still pulled back

    plain, clamped = tiny().train(), tiny(clamped_loss=True).train()
    assert torch.equal(plain.state_dict()["decoder_in.weight"], clamped.state_dict()["decoder_in.weight"])
    x = random_video(9, batch=2).sign()  # every target at an end of [-1, 1]
    with torch.no_grad():
        reconstruction = plain(x)[0]
    _, plain_logs = plain.training_loss(x)
    _, clamped_logs = clamped.training_loss(x)
    assert plain_logs["recon_mse"] == pytest.approx(float((reconstruction - x).pow(2).mean()), rel=1e-5)
    # between the picture's own error and the plain one (an output beyond the wrong end counts in full)
    picture_mse = float((reconstruction.clamp(-1, 1) - x).pow(2).mean())
    assert picture_mse <= clamped_logs["recon_mse"] + 1e-6 and clamped_logs["recon_mse"] < plain_logs["recon_mse"]
    assert clamped.codes_fingerprint() == plain.codes_fingerprint()  # same codes: shards stay valid


def test_decoder_fine_tuning_keeps_every_code_and_the_codes_fingerprint():
    torch.manual_seed(0)
    # a VQ codebook is an EMA buffer updated in training mode: freezing must stop that as well
    tok = VideoTokenizer(video_tokenizer_preset("tiny", quantizer="vq", codebook_size=32, vq_codebook_dim=4)).train()
    clip = random_video(9, batch=2)
    tok.training_loss(clip)  # kmeans-initialise the codebook before taking the reference
    codes, fingerprint, codes_fingerprint = tok.eval().encode(clip), tok.fingerprint(), tok.codes_fingerprint()
    encoder_before = {k: v.clone() for k, v in tok.state_dict().items() if k.split(".")[0] in ENCODER_MODULES}
    decoder_before = {k: v.clone() for k, v in tok.state_dict().items() if k not in encoder_before}
    tok.freeze_encoder()
    tok.train()
    optimizer = torch.optim.AdamW([p for p in tok.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss, _ = tok.training_loss(random_video(9, batch=2))
        optimizer.zero_grad()
        loss.backward()
        for name, parameter in tok.named_parameters():
            trained = name.split(".")[0] not in ENCODER_MODULES
            assert (parameter.grad is not None) == trained, name
        optimizer.step()
    state = tok.state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder_before.items())
    assert all(not torch.equal(state[k], v) for k, v in decoder_before.items() if v.is_floating_point() and v.ndim > 1)
    assert torch.equal(tok.eval().encode(clip), codes) and tok.codes_fingerprint() == codes_fingerprint
    assert tok.fingerprint() != fingerprint  # not the same tokenizer, but the same codes
    assert VideoTokenizer(tok.config).codes_fingerprint() != codes_fingerprint  # another encoder, other codes


@pytest.mark.parametrize("levels", [(8, 8, 6, 5, 5), (7, 5, 3), (4, 4)])
def test_own_fsq_is_bit_identical_to_vector_quantize_pytorch(levels):
    """tokvid.models.fsq replaces the library's FSQ: outputs, indices, decoded codes and gradients equal bit for bit."""
    from vector_quantize_pytorch import FSQ as LibraryFSQ

    from tokvid.models.fsq import FSQ

    ours, theirs = FSQ(levels), LibraryFSQ(levels=list(levels))
    z = torch.randn(3, 500, len(levels), generator=torch.Generator().manual_seed(0)) * 3
    z[0, :4] = torch.tensor([0.0, 1e-7, -40.0, 40.0])[:, None]  # zero, tiny, and saturating tanh both ways
    z_ours, z_theirs = z.clone().requires_grad_(), z.clone().requires_grad_()
    (codes, indices), (their_codes, their_indices) = ours(z_ours), theirs(z_theirs)
    assert torch.equal(codes, their_codes) and torch.equal(indices, their_indices) and indices.dtype == torch.int32
    assert len(indices.unique()) > min(20, math.prod(levels) - 1)  # many codes reached, not a constant
    weights = torch.randn(codes.shape, generator=torch.Generator().manual_seed(1))
    (codes * weights).sum().backward(), (their_codes * weights).sum().backward()
    assert torch.equal(z_ours.grad, z_theirs.grad)
    every = torch.arange(math.prod(levels)).view(1, -1)
    assert torch.equal(ours.indices_to_codes(every), theirs.indices_to_codes(every))
    assert torch.equal(ours.indices_to_level_indices(every), theirs.indices_to_level_indices(every))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == []  # saved tokenizers load either way


def test_an_fsq_tokenizer_does_not_import_vector_quantize_pytorch():
    """Its import costs a second of start-up (einx -> torch._dynamo); FSQ coding needs none of it."""
    code = ("import sys, torch\nimport tokvid\ntok = tokvid.VideoTokenizer.from_pretrained('shapes')\n"
            "codes = tok.encode(torch.zeros(1, 3, 5, 64, 64))\ntok.decode(codes)\n"
            "print('LOADED', sorted(m for m in sys.modules if m.split('.')[0] in ('vector_quantize_pytorch', 'einx')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "LOADED []" in result.stdout, result.stdout[-2000:] + result.stderr[-2000:]
