"""The web page as a new user meets it (issue 17): `koe serve` with no settings at all serves the multilingual
base model, so a Japanese file gives Japanese text without choosing a model; choosing the English-only tiny.en
for the same file shows the model's warning instead of a plausible English transcript. Real `koe serve`, real
headless Chromium (the fixtures of tests/test_web.py), real speech."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import AUDIO_DIR
from support.serving import koe_serve
from test_web import browser, downloads, job_named, wait_for  # noqa: F401 (fixtures)

JAPANESE = AUDIO_DIR / "ja" / "reazonspeech_test_ja_2.wav"  # これはテスト文です...日本語をちゃんと聞き取れて...


@pytest.fixture(scope="module")
def default_server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[str]:
    """`koe serve` with no KOE_MODEL: the default model. (The session's model cache, so base is joined once.)"""
    data = tmp_path_factory.mktemp("web-defaults")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KOE_")}
    env |= {"KOE_DATA_DIR": str(data), "KOE_CACHE_DIR": str(cache_dir), "KOE_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}  # fmt: skip
    with koe_serve(env, data) as url:
        yield url


def _transcribe(page: Any, path: Path, model: str) -> tuple[str, str]:
    """Submit `path` through the page with `model` chosen ("" leaves the server's), open the finished
    transcript; returns (the segments' text, the warning line)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    before = {item.get_attribute("data-id") for item in page.find_elements(By.CSS_SELECTOR, "#jobs > li")}
    Select(page.find_element(By.ID, "model")).select_by_value(model)
    page.find_element(By.ID, "files").send_keys(str(path))
    page.find_element(By.ID, "submit").click()

    def finished() -> dict[str, str] | None:
        item = job_named(page, path.name, {"completed", "failed", "rejected"})()
        return item if item and item["id"] not in before else None

    done = wait_for(finished, 180, f"{path.name} on {model or 'the default model'}")
    assert done["status"] == "completed", done
    item = page.find_element(By.CSS_SELECTOR, f'#jobs > li[data-id="{done["id"]}"]')
    item.find_element(By.XPATH, ".//button[normalize-space()='View transcript']").click()
    segments = wait_for(lambda: page.find_elements(By.CSS_SELECTOR, "#segments button.segment"), 20, "segments")
    text = "".join(s.find_element(By.CSS_SELECTOR, ".text").text for s in segments)
    return text, page.find_element(By.ID, "viewer-warnings").text


def test_a_japanese_file_gives_japanese_text_without_choosing_a_model(browser: Any, default_server: str) -> None:  # noqa: F811
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(f"{default_server}/")
    wait_for(lambda: browser.find_element(By.ID, "server").text == "Ready", 15, "the server line to say Ready")
    served = Select(browser.find_element(By.ID, "model")).first_selected_option.text
    assert served == "base (served)", served
    assert Select(browser.find_element(By.ID, "language")).first_selected_option.get_attribute("value") == ""

    text, warning = _transcribe(browser, JAPANESE, "")
    assert "日本語" in text and "テスト" in text, text
    assert warning == ""

    # The same file on the English-only model: the page says why its English text is not to be trusted.
    text, warning = _transcribe(browser, JAPANESE, "tiny.en")
    assert "日本語" not in text
    assert warning.startswith("Warning:") and "English-only" in warning and "tiny.en" in warning, warning
