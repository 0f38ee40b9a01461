"""The web page in a real browser (Debian's headless chromium through Selenium), and the
OpenAPI schema fuzzed by Schemathesis against the running server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from server_util import running

from paligemma.demo import synthetic
from paligemma.serve import Settings

ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"


def chromium() -> tuple[str, str]:
    """(browser, driver) paths; installs Debian's chromium + chromium-driver when missing and
    apt-get is at hand (as root), so the test command does all the set-up."""
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if (browser is None or driver is None) and shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
        ):
            subprocess.run(cmd, env=env, check=False, capture_output=True)
        browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if browser is None or driver is None:
        pytest.fail("the browser test needs Debian's chromium and chromium-driver packages")
    return browser, driver


def test_page_detects_and_draws_in_headless_chromium(embedded_pipe, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    rng = np.random.default_rng(5)
    scene = synthetic.make_scene(rng, num_things=2, size=(224, 224), antialias=True)
    picture = tmp_path / "scene.png"
    scene.image.save(picture)
    bad = tmp_path / "broken.png"
    bad.write_bytes(picture.read_bytes()[:40])  # a PNG header, then nothing
    labels = " ; ".join(dict.fromkeys(t.shape for t in scene.things))
    expected = [o for o in embedded_pipe.detect(scene.image, labels.split(" ; ")) if o.valid]

    browser, driver_path = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,800"):
        options.add_argument(flag)
    with running(embedded_pipe, Settings(model_name="embedded")) as base:
        driver = webdriver.Chrome(service=Service(driver_path), options=options)
        try:
            driver.get(base + "/")
            before = driver.execute_script("return document.body.dataset.state")
            assert before == "idle"
            driver.find_element(By.ID, "file").send_keys(str(picture))
            WebDriverWait(driver, 20).until(
                lambda d: (
                    d.execute_script("return document.getElementById('canvas').width") > 0
                    and "224x224" in d.find_element(By.ID, "status").text
                )
            )
            Select(driver.find_element(By.ID, "task")).select_by_value("detect")
            driver.find_element(By.ID, "text").send_keys(labels)
            driver.find_element(By.ID, "run").click()
            WebDriverWait(driver, 120).until(
                lambda d: (
                    d.execute_script("return document.body.dataset.state") in ("done", "error")
                )
            )
            assert driver.execute_script("return document.body.dataset.state") == "done", (
                driver.find_element(By.ID, "status").text
            )
            items = driver.find_elements(By.CSS_SELECTOR, "#objects li.object")
            assert [
                (i.get_attribute("data-label"), i.get_attribute("data-box")) for i in items
            ] == [(o.label, ",".join(map(str, o.box))) for o in expected]
            assert items, "the model found nothing to draw"
            # The box outlines are on the canvas: pixels of the palette's first colour exist.
            drawn = driver.execute_script(
                """const c = document.getElementById('canvas');
                   const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                   let n = 0;
                   for (let i = 0; i < d.length; i += 4)
                     if (d[i] === 0xe6 && d[i + 1] === 0x19 && d[i + 2] === 0x4b) n++;
                   return n;"""
            )
            assert drawn > 50, drawn
            ARTIFACTS.mkdir(exist_ok=True)
            driver.save_screenshot(str(ARTIFACTS / "web-detect.png"))
            assert (ARTIFACTS / "web-detect.png").stat().st_size > 10_000
            check_a_bad_upload_clears_the_image(driver, bad, picture)
            driver.get(base + "/docs")  # Swagger UI from this server's own files (offline)
            WebDriverWait(driver, 20).until(
                lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")
            )
            paths = {e.text for e in driver.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
            assert {"/v1/chat/completions", "/v1/detect"} <= paths, paths
        finally:
            driver.quit()


def check_a_bad_upload_clears_the_image(driver, bad: Path, good: Path) -> None:
    """After a file the browser cannot read, the old image and answer are gone and Run is
    disabled (it would answer about the previous image); a good file enables it again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run, status = driver.find_element(By.ID, "run"), driver.find_element(By.ID, "status")
    assert run.is_enabled()
    driver.find_element(By.ID, "file").send_keys(str(bad))
    WebDriverWait(driver, 20).until(lambda d: status.get_attribute("class") == "error")
    assert "broken.png" in status.text and not run.is_enabled(), status.text
    assert driver.find_elements(By.CSS_SELECTOR, "#objects li.object") == []
    painted = driver.execute_script(
        """const c = document.getElementById('canvas');
           const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
           let n = 0;
           for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) n++;
           return n;"""
    )
    assert painted == 0  # the previous picture is cleared, not left under the new name
    driver.find_element(By.ID, "file").send_keys(str(good))
    WebDriverWait(driver, 20).until(lambda d: run.is_enabled())
    assert "scene.png: 224x224" in status.text


def test_openapi_fuzzing_finds_no_server_errors(embedded_pipe):
    settings = Settings(model_name="embedded", max_tokens=8, max_body_bytes=1_000_000)
    with running(embedded_pipe, settings) as base:
        assert httpx.get(base + "/openapi.json").status_code == 200
        cli = Path(sys.executable).with_name("schemathesis")
        cmd = [
            str(cli),
            "run",
            base + "/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "1",
            "--no-color",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    report = done.stdout[-4000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    assert "/v1/chat/completions" in done.stdout and "/v1/detect" in done.stdout, report
