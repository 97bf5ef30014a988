"""`tokvid demo` served for real: headless Chromium drives the page, gradio_client calls /generate, 8 clients load it.

One server (a subprocess on a free 127.0.0.1 port, the bundled model, 2 requests at a time) serves the
whole module. Screenshots and the load test's numbers go to tests/artifacts/ (not committed).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tokvid.pipeline import TokVidPipeline
from tokvid.story import parse_story_string
from tokvid.video_io import read_video, write_video

pytest.importorskip("gradio_client", reason="the demo extra is not installed: pip install -e '.[demo]'")
pytestmark = pytest.mark.demo

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
RUN_TOKVID = "import sys; from tokvid.cli import tokvid_entry; sys.argv = ['tokvid'] + sys.argv[1:]; tokvid_entry()"
STORY = "a red circle moves right : 1s ; a red circle moves down : 1s"  # 1 + 8 + 8 frames at 8 fps
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
needs_browser = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                   reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")


def wait_for(condition, timeout: float, what: str):
    """Poll `condition` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        except Exception:  # the page is still rendering: elements come and go
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict:
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_server")
    port = free_port()
    log_path = root / "server.log"
    env = dict(child_env(), GRADIO_TEMP_DIR=str(root / "gradio"))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", RUN_TOKVID, "demo", "--port", str(port), "--share-queue", "2"],
                                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    url = f"http://127.0.0.1:{port}/"
    try:
        def ready():
            if proc.poll() is not None:
                pytest.fail(f"tokvid demo exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status == 200
        wait_for(ready, 240, "tokvid demo to serve its page")
        yield SimpleNamespace(url=url, proc=proc, log=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="tokvid-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                 "--window-size=1400,1250", "--autoplay-policy=no-user-gesture-required",
                 "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1"):  # the page must need nothing remote
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(120)
    driver.set_script_timeout(60)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, url):
    from selenium.webdriver.common.by import By

    driver.get(url)
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "#prompt-0 textarea").is_displayed(), 120, "the editor")


def field(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def type_into(driver, selector, text):
    from selenium.webdriver.common.keys import Keys

    element = field(driver, selector)
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(text, Keys.TAB)  # Gradio takes the value on input; TAB also commits numbers


def shown_prompts(driver) -> list[str]:
    from selenium.webdriver.common.by import By

    boxes = [driver.find_elements(By.CSS_SELECTOR, f"#prompt-{i} textarea") for i in range(8)]
    return [box[0].get_property("value") for box in boxes if box and box[0].is_displayed()]


@needs_browser
def test_browser_story_plays_for_its_length(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    for row, (prompt, seconds) in enumerate([("a red circle moves right", "1"), ("a red circle moves down", "1")]):
        type_into(browser, f"#prompt-{row} textarea", prompt)
        type_into(browser, f"#seconds-{row} input", seconds)
    field(browser, "#generate").click()
    video = wait_for(lambda: next(v for v in browser.find_elements(By.CSS_SELECTOR, "#result-video video")
                                  if browser.execute_script("return arguments[0].readyState", v) >= 1),
                     300, "the generated video's metadata")
    assert browser.execute_script("return arguments[0].currentSrc", video).endswith("story.mp4")
    assert browser.execute_script("return arguments[0].duration", video) == pytest.approx(17 / 8, abs=1e-3)
    browser.execute_script("arguments[0].muted = true; arguments[0].currentTime = 0; arguments[0].play();", video)
    wait_for(lambda: browser.execute_script("return arguments[0].currentTime > 0.5 && !arguments[0].error", video),
             60, "the video to play")
    assert "17 frames at 8 fps" in field(browser, "#status").text
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
    assert any(link.endswith("story.mp4") for link in links) and any(link.endswith("story.gif") for link in links)
    assert field(browser, "#contact-sheet img").get_property("naturalWidth") > 64
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo_story.png"))


@needs_browser
def test_browser_progress_bar_follows_the_chunks(server, browser):
    import re

    open_page(browser, server.url)
    field(browser, "#remove-1").click()
    wait_for(lambda: len(shown_prompts(browser)) == 1, 30, "one row left")
    type_into(browser, "#seconds-0 input", "8")  # 1 + 64 frames: 17 chunks, a few seconds
    field(browser, "#generate").click()
    seen = set()

    def finished():
        text = browser.execute_script("return document.querySelector('#result-video').innerText")
        seen.update(int(done) for done in re.findall(r"(\d+)/17 chunks", text))
        return "65 frames" in field(browser, "#status").text

    wait_for(finished, 300, "the 8 s video")
    assert any(0 < done < 17 for done in seen), f"no progress between chunks was shown: {sorted(seen)}"


@needs_browser
def test_browser_empty_prompt_shows_a_message_not_a_traceback(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    type_into(browser, "#prompt-0 textarea", "")
    field(browser, "#generate").click()
    message = "row 1 has an empty prompt; describe what happens in it"
    wait_for(lambda: [e for e in browser.find_elements(By.XPATH, f"//*[contains(text(), '{message}')]")
                      if e.is_displayed()], 60, "the error message in the page")
    assert "Traceback" not in browser.page_source
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "demo_error.png"))


@needs_browser
def test_browser_rows_add_move_remove_and_examples_fill_them(server, browser):
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    first, second = shown_prompts(browser)
    field(browser, "#add-row").click()
    wait_for(lambda: len(shown_prompts(browser)) == 3, 30, "a third row")
    type_into(browser, "#prompt-2 textarea", "a red circle stays still")
    field(browser, "#up-2").click()
    wait_for(lambda: shown_prompts(browser) == [first, "a red circle stays still", second], 30, "the row to move up")
    field(browser, "#remove-0").click()
    wait_for(lambda: shown_prompts(browser) == ["a red circle stays still", second], 30, "the first row removed")
    blue = next(e for e in browser.find_elements(By.CSS_SELECTOR, "#examples button") if "blue square" in e.text)
    blue.click()
    wait_for(lambda: shown_prompts(browser) == ["a blue square moves up", "a blue square moves right",
                                                "a blue square moves down"], 30, "the example to fill the rows")
    assert field(browser, "#seconds-2 input").get_property("value") == "1"


@needs_browser
def test_browser_single_prompt_with_a_prime_image_and_an_unreadable_prime(server, browser, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    open_page(browser, server.url)
    next(e for e in browser.find_elements(By.CSS_SELECTOR, "#mode label") if "Single prompt" in e.text).click()
    wait_for(lambda: field(browser, "#single-prompt textarea").is_displayed(), 30, "the single-prompt editor")
    type_into(browser, "#single-prompt textarea", "a red circle moves right")
    type_into(browser, "#single-seconds input", "1")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"this is not an image")
    field(browser, "#prime input[type=file]").send_keys(str(broken))
    wait_for(lambda: "broken" in field(browser, "#prime").text, 60, "the upload")
    field(browser, "#generate").click()
    message = "cannot use the prime file broken.png"
    wait_for(lambda: [e for e in browser.find_elements(By.XPATH, f"//*[contains(text(), '{message}')]")
                      if e.is_displayed()], 60, "the unreadable prime's message")
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[26:38, 10:22] = (230, 40, 40)  # a red square on the left, where the video starts
    Image.fromarray(frame).save(tmp_path / "prime.png")
    browser.find_element(By.CSS_SELECTOR, "#prime button[aria-label='Clear']").click()
    field(browser, "#prime input[type=file]").send_keys(str(tmp_path / "prime.png"))
    wait_for(lambda: "prime" in field(browser, "#prime").text.replace("Prime", ""), 60, "the second upload")
    field(browser, "#generate").click()
    wait_for(lambda: "9 frames at 8 fps" in field(browser, "#status").text, 300, "the primed single-prompt video")
    mp4 = next(a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")
               if a.get_attribute("href").endswith(".mp4"))
    with urllib.request.urlopen(mp4, timeout=30) as response:
        (tmp_path / "primed.mp4").write_bytes(response.read())
    first = read_video(tmp_path / "primed.mp4")[0].astype(int)
    assert np.abs(first - frame).mean() < 2  # starts from the prime (here 0.3 before H.264; unprimed: ~6)


def test_client_generate_gives_the_frames_of_tokvid_generate(server, tmp_path):
    from gradio_client import Client

    client = Client(server.url, verbose=False, download_files=str(tmp_path / "downloads"))
    served = Path(client.predict(STORY, 5, api_name="/generate"))
    cli = subprocess.run([sys.executable, "-c", RUN_TOKVID, "generate", "--story", STORY, "--seed", "5",
                          "--out", str(tmp_path / "cli.mp4"), "--quiet"], capture_output=True, text=True,
                         env=child_env(), timeout=300)
    assert cli.returncode == 0, cli.stderr
    # H.264 is lossy but deterministic: the same frames through the same write_video give the same bytes
    assert served.read_bytes() == (tmp_path / "cli.mp4").read_bytes()
    pipe = TokVidPipeline.from_pretrained()
    write_video(tmp_path / "pipe.mp4", pipe.story(parse_story_string(STORY, pipe.fps), seed=5).frames, fps=pipe.fps)
    assert served.read_bytes() == (tmp_path / "pipe.mp4").read_bytes()
    assert read_video(served).shape == (17, 64, 64, 3)
    other = Path(client.predict(STORY, 6, api_name="/generate"))
    assert not np.array_equal(read_video(other), read_video(served))
    with pytest.raises(Exception, match="the story is empty"):
        client.predict("", 0, api_name="/generate")


def resident_kib(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for process {pid}")


def test_load_eight_concurrent_clients_are_all_served(server, tmp_path):
    from gradio_client import Client

    story, clients = "a red circle moves right : 1s", 8
    before = resident_kib(server.proc.pid)
    samples, stop = [], threading.Event()

    def sample():
        while not stop.is_set():
            samples.append(resident_kib(server.proc.pid))
            time.sleep(0.1)

    start_together = threading.Barrier(clients)

    def one(index):
        client = Client(server.url, verbose=False, download_files=str(tmp_path / f"client{index}"))
        start_together.wait(timeout=120)
        started = time.perf_counter()
        path = client.submit(story, index % 4, api_name="/generate").result(timeout=600)
        return Path(path), time.perf_counter() - started

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    wall = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(one, i) for i in range(clients)]
        outcomes = [(f.result(), None) if f.exception() is None else (None, f.exception()) for f in futures]
    wall = time.perf_counter() - wall
    stop.set()
    sampler.join(timeout=10)
    served = [result for result, error in outcomes if error is None]
    report = {"requests": clients, "served": len(served), "failures": [repr(e) for _, e in outcomes if e],
              "wall_s": round(wall, 2), "mean_request_s": round(sum(s for _, s in served) / max(len(served), 1), 2),
              "wall_s_per_request": round(wall / clients, 2), "rss_before_mib": round(before / 1024),
              "rss_peak_during_mib": round(max(samples) / 1024), "rss_hwm_mib": round(resident_kib(server.proc.pid, "VmHWM") / 1024),
              "concurrency": 2, "story": story}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "demo_load.json").write_text(json.dumps(report, indent=2) + "\n")
    print("load test:", json.dumps(report))
    assert report["failures"] == [] and len(served) == clients
    frames = [read_video(path) for path, _ in served]
    assert all(f.shape == (9, 64, 64, 3) for f in frames)
    for index in range(4):  # two requests per seed, served side by side: the same file
        assert served[index][0].read_bytes() == served[index + 4][0].read_bytes()
    # measured here: ~720 MiB idle after the first requests, under 1 GiB while two requests run at a time and
    # six wait; a leak per request or a queue that ran all eight at once would break these bounds
    assert report["rss_peak_during_mib"] - report["rss_before_mib"] < 512
    assert report["rss_hwm_mib"] < 2048
