"""Resume with 2 loader workers per rank, on 2 ranks (gloo, CPU), repeats the losses of an uninterrupted
run without workers bit for bit (the 1-rank case: test_training.py). The toy model and items of
test_training.py train in 2 plain processes given the environment a launcher would give them; run as a
script, this file is one such rank. Each rank runs the reference, the interrupted run and its resume one
after the other (a training launch costs ~10 s of imports here; the runs share only the process group, as
the 1-rank test's runs share their process).
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

STEPS, STOP_AT, CORRUPT = 6, 3, (5, 9)


def rank_main(out: str) -> None:
    """One rank: the toy trained without workers; then with 2 workers, rank 0 alone getting SIGTERM in step
    STOP_AT (every rank must agree on it, save and stop), and resumed with 2 workers."""
    from test_training import Items, train

    calls = []

    def stop_in_step():
        calls.append(1)
        if len(calls) == STOP_AT and os.environ["RANK"] == "0":
            os.kill(os.getpid(), signal.SIGTERM)

    runs = [(out + "/reference", 0, None), (out + "/resumed", 2, stop_in_step), (out + "/resumed", 2, None)]
    summaries = []
    for directory, workers, on_loss in runs:
        result, _ = train(Path(directory), steps=STEPS, items=Items(corrupt=CORRUPT), on_loss=on_loss,
                          num_workers=workers)
        summaries.append({"step": result.step, "status": result.status, "bad_items": result.bad_items})
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # an interrupted run leaves its stop handler installed
    Path(out, f"rank{os.environ['RANK']}.json").write_text(json.dumps(summaries))


def two_ranks(out: Path) -> list[list[dict]]:
    """Run rank_main on 2 ranks; each rank's summaries of its three runs."""
    from tokvid.training.distributed import free_port

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # this test process may be a 1-rank world already: its port is taken
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    logs = [out / f"log-rank{rank}.txt" for rank in range(2)]
    ranks = [subprocess.Popen([sys.executable, __file__, str(out)], stdout=open(logs[rank], "w"),
                              stderr=subprocess.STDOUT, env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)})
             for rank in range(2)]
    codes = [rank.wait(timeout=600) for rank in ranks]
    assert codes == [0, 0], "\n".join(log.read_text()[-3000:] for log in logs)
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def losses_and_bad_items(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    return [(record["step"], record["loss"], record["bad_items"]) for record in records]


def test_resume_with_two_workers_on_two_ranks_repeats_the_uninterrupted_run_without_workers(tmp_path):
    ranks = two_ranks(tmp_path)
    for reference, stopped, resumed in ranks:
        assert (reference["status"], reference["step"]) == ("finished", STEPS)
        assert (stopped["status"], stopped["step"]) == ("interrupted", STOP_AT)  # rank 1 agreed with rank 0
        assert (resumed["status"], resumed["step"]) == ("finished", STEPS)
        assert resumed["bad_items"] == reference["bad_items"]
    expected = losses_and_bad_items(tmp_path / "reference")
    assert [step for step, _, _ in expected] == list(range(1, STEPS + 1))
    assert expected[-1][2] > 0  # the corrupt items were met, and replaced alike
    assert losses_and_bad_items(tmp_path / "resumed") == expected  # bit for bit, steps 1-6


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    rank_main(*sys.argv[1:])
