"""bench/data.py runs end to end at smoke sizes and checks what it measures (no timing is asserted)."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_data_bench_smoke(tmp_path):
    out = tmp_path / "data.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "data.py"), "--smoke", "--work", str(tmp_path / "w"),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "shard random access" in proc.stdout and "tokvid-encode videos/s" in proc.stdout
    results = json.loads(out.read_text())
    v2 = results["access"]["v2"]
    assert v2["random_equals_sequential"] and v2["items"] == 3000
    # one process per epoch order, each with its pair of passes; every shard open before the pairs
    assert [run["epoch_order"] for run in v2["runs"]] == ["sequential", "random"] and v2["pairs"] == 2
    assert all(run["shards_open"] == 3 for run in v2["runs"])
    assert v2["random_over_sequential"] == v2["random_items_per_s"] / v2["sequential_items_per_s"]
    assert all(0 < run["cpu_share"] <= 1.5 and len(run["cpu_s"]) == run["processes"]
               for n in ("1", "2") for run in results["encode"][n]["rounds"])
    assert results["open"]["v1"]["items"] == results["open"]["v2"]["items"] == 3000
    assert results["window"]["same_frames"] and results["encode"]["same_items"]
    assert results["manifest"]["index"]["lines"] == results["manifest"]["check"]["lines"] == 2000
    assert results["encode"]["2"]["videos"] == results["encode"]["1"]["videos"] == 8
    assert set(results["wait"]["clips"]) == {"0", "2"}
