"""The web page in a real browser: headless Chromium from Debian's packages, driven by
Selenium, against a real server. Without Chromium the test is skipped with how to install it."""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.conftest import Deployed

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [pytest.mark.ray, pytest.mark.app("cpu"), pytest.mark.skipif(
    not (CHROMIUM and DRIVER),
    reason="no Chromium here: install it with `sudo apt-get install chromium chromium-driver` (.ci/run does)",
)]


def _browser(width: int = 412) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     f"--window-size={width},1400"):  # a phone's width
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless browser for the module; each test loads the page afresh."""
    browser = _browser()
    try:
        yield browser
    finally:
        browser.quit()


@pytest.fixture
def page(app: Deployed, browser: Any) -> tuple[Deployed, Any]:
    """The served ``cpu.yaml`` and the browser."""
    return app, browser


def _enter_prompt(browser: Any, url: str, text: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/")
    deadline = time.monotonic() + 30  # the page has its handlers and the catalog (a loaded machine is slow)
    while time.monotonic() < deadline and browser.execute_script("return document.body.dataset.ready") != "true":
        time.sleep(0.05)
    assert browser.execute_script("return document.body.dataset.ready") == "true", "the page never finished loading"
    prompt = browser.find_element(By.ID, "prompt")
    prompt.clear()
    prompt.send_keys(text)


def test_prompt_to_image_with_live_progress(page: tuple[Any, Any], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    app, browser = page
    _enter_prompt(browser, app.url, "a red boat on a calm lake")
    Select(browser.find_element(By.ID, "size")).select_by_visible_text("64x64")
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("60")
    browser.find_element(By.ID, "go").click()
    seen, deadline = set(), time.monotonic() + 120
    while time.monotonic() < deadline:
        seen.add(browser.execute_script("return document.getElementById('progress').value"))
        if browser.find_elements(By.CSS_SELECTOR, "#results img"):
            break
        time.sleep(0.05)
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    image = browser.find_element(By.CSS_SELECTOR, "#results img")
    assert browser.execute_script("return arguments[0].naturalWidth", image) == 64
    assert browser.execute_script("return arguments[0].naturalHeight", image) == 64
    moving = sorted(v for v in seen if 0 < v < 60)
    assert len(moving) >= 2, f"the progress bar did not move: {sorted(seen)}"
    shot = Image.open(io.BytesIO(image.screenshot_as_png)).convert("RGB")
    assert shot.size[0] >= 60 and shot.size[1] >= 60
    assert len(set(shot.getdata())) > 10, "the image element rendered blank"
    assert "seed" in browser.find_element(By.ID, "timings").text
    screenshot = tmp_path / "page.png"
    browser.save_screenshot(str(screenshot))
    assert Image.open(screenshot).size[0] > 0
    if os.environ.get("SDSERVE_SCREENSHOT"):  # to refresh the README's picture
        browser.save_screenshot(os.environ["SDSERVE_SCREENSHOT"])


def test_the_page_shows_the_api_error(page: tuple[Any, Any]) -> None:
    from selenium.webdriver.common.by import By

    app, browser = page
    _enter_prompt(browser, app.url, " ")  # an empty prompt: the API's 422 message must show, not a blank page
    browser.execute_script("document.getElementById('prompt').removeAttribute('required')")
    browser.find_element(By.ID, "go").click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not browser.find_element(By.ID, "error").is_displayed():
        time.sleep(0.05)
    assert "prompt must not be empty" in browser.find_element(By.ID, "error").text


def test_a_model_and_a_lora_are_picked_and_the_fleet_panel_shows_where_checkpoints_are(
        page: tuple[Any, Any]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    app, browser = page
    _enter_prompt(browser, app.url, "a lighthouse")
    model = Select(browser.find_element(By.ID, "model-select"))
    assert [o.text for o in model.options] == ["tiny", "tiny-1", "tiny-2", "tiny-3"]
    lora = Select(browser.find_element(By.ID, "lora"))
    assert [o.text for o in lora.options] == ["none", "tiny-lora-1", "tiny-lora-2", "tiny-lora-3"]
    model.select_by_visible_text("tiny-2")
    lora.select_by_visible_text("tiny-lora-1")
    Select(browser.find_element(By.ID, "size")).select_by_visible_text("64x64")
    seed = browser.find_element(By.ID, "seed")
    seed.send_keys("11")
    steps = browser.find_element(By.ID, "steps")
    steps.clear()
    steps.send_keys("3")
    browser.find_element(By.ID, "go").click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "tiny-lora-1" not in browser.find_element(By.ID, "timings").text:
        time.sleep(0.05)
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    assert "tiny-2 + tiny-lora-1" in browser.find_element(By.ID, "timings").text
    shown = browser.find_element(By.CSS_SELECTOR, "#results img").get_attribute("src").split(",", 1)[1]
    served = app.client.post("/v1/images/generations", json={
        "prompt": "a lighthouse", "model": "tiny-2", "loras": [{"id": "tiny-lora-1", "scale": 1}], "size": "64x64",
        "seed": 11, "num_inference_steps": 3}).json()["data"][0]["b64_json"]
    assert shown == served  # the page sent the model and the LoRA it showed
    while time.monotonic() < deadline and int(browser.find_element(By.ID, "chart").get_attribute("data-samples") or 0) < 2:
        time.sleep(0.2)  # the fleet panel samples every 2 s
    assert int(browser.find_element(By.ID, "chart").get_attribute("data-samples")) >= 2
    replicas = browser.find_element(By.ID, "replicas").text
    assert "tiny-2" in replicas and "on the device" in replicas, replicas


def test_an_image_is_edited_from_the_page_with_a_mask(page: tuple[Any, Any], tmp_path: Path) -> None:
    import numpy as np
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    app, browser = page
    source = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.full((64, 64, 4), 255, dtype=np.uint8)
    mask[:32, :, 3] = 0  # the top half is to be edited
    Image.fromarray(source).save(tmp_path / "in.png")
    Image.fromarray(mask).save(tmp_path / "mask.png")
    _enter_prompt(browser, app.url, "a lighthouse")
    Select(browser.find_element(By.ID, "mode")).select_by_value("edit")
    assert not browser.find_element(By.ID, "size").is_displayed()  # an edit has its image's size
    browser.find_element(By.ID, "image").send_keys(str(tmp_path / "in.png"))
    browser.find_element(By.ID, "mask").send_keys(str(tmp_path / "mask.png"))
    for field, value in (("strength", "1"), ("steps", "3"), ("seed", "8")):
        element = browser.find_element(By.ID, field)
        element.clear()
        element.send_keys(value)
    browser.find_element(By.ID, "go").click()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not browser.find_elements(By.CSS_SELECTOR, "#results img"):
        time.sleep(0.05)
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    shown = browser.find_element(By.CSS_SELECTOR, "#results img").get_attribute("src").split(",", 1)[1]
    edited = np.array(Image.open(io.BytesIO(__import__("base64").b64decode(shown))).convert("RGB"))
    assert edited.shape == (64, 64, 3) and np.array_equal(edited[32:], source[32:])  # the kept half is untouched
    served = app.client.post("/v1/images/edits", files={"image": (tmp_path / "in.png").read_bytes(),
                                                        "mask": (tmp_path / "mask.png").read_bytes()},
                             data={"prompt": "a lighthouse", "num_inference_steps": "3", "seed": "8", "strength": "1"})
    assert served.json()["data"][0]["b64_json"] == shown  # the page sent what it showed
