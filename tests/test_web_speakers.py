"""The web page with speaker labels (issue 16), in real headless Chromium against a real `koe serve`: ask for
speakers, see them on each segment, rename them, and find the names again after a reload.

Uses test_web's server, browser and page fixtures (Debian's chromium + chromium-driver; skipped without).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_diarize import two_readers, wav_bytes
from test_web import browser, downloads, job_named, page, server, wait_for  # noqa: F401 (fixtures)


def shown_speakers(driver: Any) -> list[tuple[str, str]]:
    """(label, shown name) of each segment's speaker, in order."""
    pairs: list[tuple[str, str]] = driver.execute_script(
        "return [...document.querySelectorAll('#segments .speaker')].map(s => [s.dataset.speaker, s.textContent])"
    )
    return [(label, name) for label, name in pairs]


def open_transcript(driver: Any, job_id: str) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    item = driver.find_element(By.CSS_SELECTOR, f'#jobs > li[data-id="{job_id}"]')
    item.find_element(By.XPATH, ".//button[normalize-space()='View transcript']").click()
    return wait_for(lambda: shown_speakers(driver), 30, "segments with speakers")


def test_speakers_shown_and_renamed(page: Any, tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    from selenium.webdriver.common.by import By

    meeting = tmp_path / "meeting.wav"
    meeting.write_bytes(wav_bytes(two_readers(0.6).samples))
    box = page.find_element(By.ID, "diarize")
    if not box.is_selected():
        box.click()
    page.find_element(By.ID, "files").send_keys(str(meeting))
    page.find_element(By.ID, "submit").click()
    done = wait_for(job_named(page, "meeting.wav", {"completed", "failed", "rejected"}), 240, "meeting.wav")
    assert done["status"] == "completed", done

    speakers = open_transcript(page, done["id"])
    assert {label for label, _ in speakers} == {"Speaker 1", "Speaker 2"}
    assert all(label == name for label, name in speakers)
    assert not page.find_element(By.ID, "speakers").get_attribute("hidden")
    inputs = page.find_elements(By.CSS_SELECTOR, "#speaker-names input")
    assert [i.get_attribute("data-speaker") for i in inputs] == ["Speaker 1", "Speaker 2"]
    labels = [page.find_element(By.CSS_SELECTOR, f"label[for='{i.get_attribute('id')}']").text for i in inputs]
    assert labels == ["Speaker 1", "Speaker 2"]  # each name field is labelled

    inputs[0].clear()
    inputs[0].send_keys("Alice")
    renamed = wait_for(
        lambda: [p for p in shown_speakers(page) if p[0] == "Speaker 1" and p[1] == "Alice"], 5, "the new name"
    )
    assert renamed
    assert all(name == ("Alice" if label == "Speaker 1" else "Speaker 2") for label, name in shown_speakers(page))

    page.refresh()
    wait_for(lambda: page.find_element(By.ID, "server").text == "Ready", 15, "Ready after reload")
    wait_for(job_named(page, "meeting.wav", {"completed"}), 15, "the job after reload")
    again = open_transcript(page, done["id"])
    assert ("Speaker 1", "Alice") in again and ("Speaker 2", "Speaker 2") in again
    assert page.find_elements(By.CSS_SELECTOR, "#speaker-names input")[0].get_attribute("value") == "Alice"
