"""The README's runnable blocks run as written, in order, in a fresh working directory.

A block fenced as `bash` or `python` is runnable (the README says so); the Python blocks run in one
session, in order. The set-up commands' installs are not repeated here (the test environment is that
install); their `tokvid generate` runs, since later blocks read its video.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_DEFAULT = (REPO / "tokvid" / "weights" / "shapes" / "pipeline.json").exists()


def runnable_blocks() -> list[tuple[str, str]]:
    blocks = re.findall(r"```(bash|python)\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    runnable = []
    for kind, text in blocks:
        if kind == "bash" and "pip install" in text:
            if "tokvid generate" not in text:
                continue  # the test command: this suite
            text = text[text.index("tokvid generate"):]
        runnable.append((kind, text))
    return runnable


def outputs(kind: str, text: str) -> list[str]:
    """The files a block writes: --out arguments and the Python calls that write videos and sheets."""
    if kind == "bash":  # `tokvid generate` writes a contact sheet beside its video
        written = []
        for command in text.replace("\\\n", " ").splitlines():
            words = shlex.split(command, comments=True)
            for i, word in enumerate(words[:-1]):
                if word == "--out":
                    written.append(words[i + 1])
                    if words[:2] == ["tokvid", "generate"] and "--no-sheet" not in words:
                        written.append(str(Path(words[i + 1]).with_suffix(".png")))
        return written
    return re.findall(r"(?:write_video|save_contact_sheet|save_pretrained)\(\"([^\"]+)\"", text)


def test_readme_examples_write_distinct_files():
    written = [path for kind, text in runnable_blocks() for path in outputs(kind, text)]
    assert "story.png" in written and len(written) == len(set(written)), written


@pytest.mark.skipif(not HAS_DEFAULT, reason="the bundled default model is not in this checkout")
def test_readme_runnable_blocks_run_as_written(tmp_path):
    for name in ("train", "ds_config.json", "docs"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # this test process may be a 1-rank world already: its port is taken
    blocks = runnable_blocks()
    python = [text for kind, text in blocks if kind == "python"]
    for kind, text in blocks:
        if kind == "bash":
            result = subprocess.run(["bash", "-e", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True,
                                    timeout=1800)
        elif text is python[0]:  # the Python blocks, once, as one session, where the first of them stands
            result = subprocess.run([sys.executable, "-c", "\n".join(python)], cwd=tmp_path, env=env,
                                    capture_output=True, text=True, timeout=900)
        else:
            continue
        assert result.returncode == 0, f"{text}\n{result.stderr[-3000:]}"
    for kind, text in blocks:
        for path in outputs(kind, text):
            assert (tmp_path / path).exists(), path
