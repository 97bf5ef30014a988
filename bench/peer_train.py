"""Train the peer, phenaki-pytorch 0.5.0, on a data set prepared by bench/peer_scenes.py for a wall-clock
budget, then sample stories with it. Runs with the peer venv's python (bench/setup_peer.sh), never tokvid's;
bench/peer_scenes.py calls it (one command does everything, see docs/scenes.md):

    bench/.peer-venv/bin/python bench/peer_train.py train --data DATA --run RUN --minutes 90 [--set KEY=JSON]
    bench/.peer-venv/bin/python bench/peer_train.py generate --run RUN --prompts prompts.json --out VIDEOS

DATA holds frames.u8 (every frame, raw uint8 N x H x W x 3), items.jsonl (one training item a line:
{"start", "frames", "caption"}: 1 frame is a still image, else a clip of 1 + 2k frames: a segment after its
leading frame) and info.json.

Training takes two stages, as the peer's paper and trainers do: C-ViViT first (the reconstruction loss its
forward returns without the GAN, which needs ImageNet VGG weights), for tokenizer_share of the budget; then
MaskGIT (the peer's Phenaki.forward: masked token prediction on the frozen C-ViViT's codes, text stand-in
"words" of bench/peer_harness.py, condition dropout 0.25), for the rest. Optimisers are the peer trainers'
defaults: Adam (betas 0.9, 0.99) at 3e-4 with gradient-norm clipping at 0.5 for C-ViViT, at 1e-4 for MaskGIT.
Joint image-video training as the peer takes it: each step is one batch of one kind, still images (4-D
tensors: one frame) with probability image_ratio, else clips of one length drawn in proportion to their
counts. Batch k comes from (seed, stage, k) alone and torch's RNG is reseeded every step, so a resumed run
takes the same batches. A stage checkpoints every checkpoint_minutes and at its end (atomically); running
the same command again continues where it stopped. The budget counts training time only (a step lost to an
interruption is not counted).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import peer_harness  # noqa: E402

TRAIN_DEFAULTS = {
    **peer_harness.DEFAULTS,
    "text_standin": "words",
    "tokenizer_share": 0.35,  # of the budget, for C-ViViT; MaskGIT gets the rest
    "image_ratio": 0.5,  # share of steps that are still-image batches (tokvid's scenes recipe uses 0.5 too)
    "tok_batch": 4,  # the peer README's C-ViViT trainer example
    "tok_lr": 3e-4,  # CViViTTrainer defaults
    "tok_max_grad_norm": 0.5,
    "gen_batch": 16,  # PhenakiTrainer defaults
    "gen_lr": 1e-4,
    "checkpoint_minutes": 5.0,
}
STAGES = ("cvivit", "maskgit")
PRIME_FRAMES = 1  # a later scene is primed on the last frame: a training clip's leading frame


# ----------------------------------------------------------------------------------------------
# data


class TrainingItems:
    """The prepared items, grouped by frame count; batch(rng, size, image_ratio) draws one batch of one kind."""

    def __init__(self, data_dir: str | Path):
        import numpy as np

        data_dir = Path(data_dir)
        info = json.loads((data_dir / "info.json").read_text())
        shape = (info["frames"], info["height"], info["width"], 3)
        self.frames = np.memmap(data_dir / "frames.u8", dtype=np.uint8, mode="r", shape=shape)
        self.groups: dict[int, list[dict]] = {}
        for line in (data_dir / "items.jsonl").read_text().splitlines():
            item = json.loads(line)
            self.groups.setdefault(int(item["frames"]), []).append(item)
        self.clip_lengths = sorted(length for length in self.groups if length > 1)
        if not self.clip_lengths:
            raise SystemExit(f"{data_dir} holds no video clips")
        self.size = info["height"]

    def batch(self, rng, size: int, image_ratio: float):
        """(pixels, captions): pixels (b, 3, h, w) for stills or (b, 3, t, h, w) for clips, on [0, 1]."""
        import numpy as np
        import torch

        if 1 in self.groups and rng.random() < image_ratio:
            length = 1
        else:
            counts = np.array([len(self.groups[n]) for n in self.clip_lengths], float)
            length = self.clip_lengths[int(rng.choice(len(counts), p=counts / counts.sum()))]
        group = self.groups[length]
        picked = [group[int(i)] for i in rng.integers(len(group), size=size)]
        clips = np.stack([self.frames[item["start"]:item["start"] + length] for item in picked])
        pixels = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255.0
        return (pixels[:, :, 0] if length == 1 else pixels), [item["caption"] for item in picked]


# ----------------------------------------------------------------------------------------------
# training


def stage_budget_s(cfg: dict, stage: str) -> float:
    share = cfg["tokenizer_share"] if stage == "cvivit" else 1.0 - cfg["tokenizer_share"]
    return cfg["minutes"] * 60.0 * share


def save_atomically(obj, path: Path) -> None:
    import torch

    partial = path.with_name(f".{path.name}.partial")
    torch.save(obj, partial)
    os.replace(partial, path)


def train_stage(stage: str, cfg: dict, run_dir: Path, items: TrainingItems) -> dict:
    """Train one stage until its share of the budget is spent; return its summary (also RUN/<stage>.json)."""
    import numpy as np
    import torch

    summary_path = run_dir / f"{stage}.json"
    if summary_path.exists():
        return json.loads(summary_path.read_text())
    model, params, loss_of = stage_model(stage, cfg, run_dir)
    prefix = "tok" if stage == "cvivit" else "gen"
    optimizer = torch.optim.Adam(params, lr=cfg[f"{prefix}_lr"], betas=(0.9, 0.99))
    checkpoint = run_dir / f"{stage}.ckpt"
    state = {"step": 0, "elapsed_s": 0.0, "losses": []}
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        print(f"{stage}: resuming at step {state['step']} ({state['elapsed_s'] / 60:.1f} min trained)", flush=True)
    budget, last_save = stage_budget_s(cfg, stage), time.monotonic()
    stage_index = STAGES.index(stage)

    def save():
        save_atomically({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "state": state}, checkpoint)

    while state["elapsed_s"] < budget:
        started = time.perf_counter()
        torch.manual_seed(cfg["seed"] * 1_000_003 + stage_index * 100_003 + state["step"])
        rng = np.random.default_rng([cfg["seed"], stage_index, state["step"]])
        pixels, captions = items.batch(rng, cfg[f"{prefix}_batch"], cfg["image_ratio"])
        loss = loss_of(pixels, captions)
        loss.backward()
        if stage == "cvivit":
            torch.nn.utils.clip_grad_norm_(params, cfg["tok_max_grad_norm"])
        optimizer.step()
        optimizer.zero_grad()
        state["elapsed_s"] += time.perf_counter() - started
        state["step"] += 1
        state["losses"].append([state["step"], round(loss.item(), 6), int(pixels.ndim == 4)])
        if time.monotonic() - last_save > cfg["checkpoint_minutes"] * 60 or state["elapsed_s"] >= budget:
            save()
            last_save = time.monotonic()
            print(f"{stage}: step {state['step']}, {state['elapsed_s'] / 60:.1f}/{budget / 60:.1f} min, "
                  f"loss {loss.item():.4f}", flush=True)
    if state["step"] == 0:
        save()
    save_atomically(model.state_dict(), run_dir / f"{stage}.pt")
    summary = stage_summary(stage, state, budget, model, cfg)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def stage_model(stage: str, cfg: dict, run_dir: Path):
    """(module to checkpoint, parameters to train, loss_of(pixels, captions))."""
    if stage == "cvivit":
        cvivit = peer_harness.build_cvivit(cfg).train()
        return cvivit, list(cvivit.parameters()), lambda pixels, captions: cvivit(pixels)
    phenaki = peer_harness.build_phenaki({**cfg, "weights": str(run_dir / "cvivit.pt")})
    phenaki.maskgit.train()
    return (phenaki.maskgit, list(phenaki.maskgit.parameters()),
            lambda pixels, captions: phenaki(videos=pixels, texts=captions))


def stage_summary(stage: str, state: dict, budget: float, model, cfg: dict) -> dict:
    losses = state["losses"]
    tail = [loss for _, loss, _ in losses[-50:]]
    batch = cfg["tok_batch" if stage == "cvivit" else "gen_batch"]
    return {"stage": stage, "steps": state["step"], "trained_minutes": round(state["elapsed_s"] / 60, 2),
            "budget_minutes": round(budget / 60, 2), "batch": batch,
            "image_batches": sum(image for *_, image in losses),
            "parameters": peer_harness.num_parameters(model),
            "first_loss": losses[0][1] if losses else None,
            "final_loss_mean_last_50": round(sum(tail) / len(tail), 6) if tail else None,
            "loss_curve": losses[:: max(1, len(losses) // 200)]}


def run_config(run_dir: Path, minutes: float, overrides: dict) -> dict:
    """The run's settings: fixed when it starts (RUN/config.json); a re-run must ask for the same ones."""
    path = run_dir / "config.json"
    cfg = {**TRAIN_DEFAULTS, **overrides, "minutes": minutes}
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(key for key in set(saved) | set(cfg) if saved.get(key) != cfg.get(key))
        if changed:
            raise SystemExit(f"{run_dir} was started with other settings ({', '.join(changed)}: "
                             f"{ {k: saved.get(k) for k in changed} }); re-run with those or use a new --run")
        return saved
    run_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
    return cfg


def train(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    run_dir = Path(args.run)
    cfg = run_config(run_dir, args.minutes, overrides_from(args.set))
    items = TrainingItems(args.data)
    if items.size != cfg["image_size"]:
        raise SystemExit(f"{args.data} holds {items.size}px frames but image_size is {cfg['image_size']}")
    summaries = {stage: train_stage(stage, cfg, run_dir, items) for stage in STAGES}
    for summary in summaries.values():
        print(f"{summary['stage']}: {summary['steps']} steps in {summary['trained_minutes']} min, "
              f"loss {summary['first_loss']} -> {summary['final_loss_mean_last_50']}", flush=True)
    return summaries


# ----------------------------------------------------------------------------------------------
# sampling


def load_trained(run_dir: Path):
    import torch

    cfg = json.loads((run_dir / "config.json").read_text())
    for stage in STAGES:
        if not (run_dir / f"{stage}.json").exists():
            raise SystemExit(f"{run_dir}: stage {stage} has not finished; run `peer_train.py train` first")
    model = peer_harness.build_phenaki({**cfg, "weights": str(run_dir / "cvivit.pt")})
    model.maskgit.load_state_dict(torch.load(run_dir / "maskgit.pt", map_location="cpu"))
    return model.eval(), cfg


def sample_story(model, story: list) -> "np.ndarray":
    """uint8 (1 + sum(frames), H, W, 3): scene 1 from scratch (its leading frame + frames), each later scene
    primed on the last frame before it, as the peer's make_video does."""
    import phenaki_pytorch

    texts = [prompt for prompt, _ in story]
    lengths = tuple([1 + story[0][1]] + [frames for _, frames in story[1:]])
    video, _ = phenaki_pytorch.make_video(model, texts=texts, num_frames=lengths,
                                          prime_lengths=(PRIME_FRAMES,) * (len(story) - 1))
    return (video[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 3, 0).numpy()


def write_set_videos(path: Path, stories: list, seed: int, seconds: list[float], videos: list) -> None:
    """One set's videos as bench/eval_scenes.py --videos reads them: story i sampled at seed + i."""
    import numpy as np

    partial = path.with_name(f".{path.stem}.partial.npz")
    np.savez(partial, stories=json.dumps(stories), seeds=np.arange(len(stories)) + seed, seconds=np.array(seconds),
             **{f"video_{i}": video for i, video in enumerate(videos)})
    os.replace(partial, path)


def generate(args) -> dict:
    """Sample every set of the prompts file into OUT/<set>.npz (skipping sets already there), and OUT/producer.json."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    run_dir, out = Path(args.run), Path(args.out)
    model, cfg = load_trained(run_dir)
    prompts = json.loads(Path(args.prompts).read_text())
    out.mkdir(parents=True, exist_ok=True)
    for name, stories in prompts["sets"].items():
        path = out / f"{name}.npz"
        if path.exists() and json.loads(str(np.load(path)["stories"])) == stories:
            continue
        videos, seconds = [], []
        for i, story in enumerate(stories):
            torch.manual_seed(prompts["seed"] + i)
            started = time.perf_counter()
            videos.append(sample_story(model, story))
            seconds.append(time.perf_counter() - started)
            print(f"\r{name}: {i + 1}/{len(stories)}", end="", flush=True)
        print(flush=True)
        write_set_videos(path, stories, prompts["seed"], seconds, videos)
    producer = {"model": "phenaki-pytorch 0.5.0", "versions": peer_harness.peer_versions(),
                "settings": cfg, "training": {stage: json.loads((run_dir / f"{stage}.json").read_text())
                                              for stage in STAGES},
                "sampling": {"steps": cfg["steps"], "cond_scale": 3.0, "temperature": 0.9,
                             "prime_frames": PRIME_FRAMES, "threads": args.threads}}
    common.write_json(out / "producer.json", producer)
    return producer


# ----------------------------------------------------------------------------------------------
# command line


def overrides_from(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in TRAIN_DEFAULTS or key == "minutes":
            raise SystemExit(f"--set {item!r}: use KEY=JSON with KEY one of {sorted(TRAIN_DEFAULTS)}")
        overrides[key] = json.loads(value)
    return overrides


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train_parser = commands.add_parser("train", help="train C-ViViT, then MaskGIT, for --minutes (resumable)")
    train_parser.add_argument("--data", required=True, help="directory written by bench/peer_scenes.py")
    train_parser.add_argument("--run", required=True, help="checkpoints, weights and stage summaries go here")
    train_parser.add_argument("--minutes", type=float, required=True, help="training wall-clock budget")
    train_parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                              help=f"override a setting (see --dump-config): {', '.join(TRAIN_DEFAULTS)}")
    sample_parser = commands.add_parser("generate", help="sample the stories of a prompts file")
    sample_parser.add_argument("--run", required=True)
    sample_parser.add_argument("--prompts", required=True, help='JSON {"seed": s, "sets": {name: [story, ...]}}')
    sample_parser.add_argument("--out", required=True, help="directory for <set>.npz and producer.json")
    commands.add_parser("dump-config", help="print the default settings as JSON")
    for sub in (train_parser, sample_parser):
        sub.add_argument("--threads", type=int, default=common.DEFAULT_THREADS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.command == "dump-config":
        print(json.dumps(TRAIN_DEFAULTS, indent=2))
    elif args.command == "train":
        train(args)
    else:
        generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
