"""The workbench as a visitor sees it: Debian's chromium, headless, driven by Playwright.

Opens the launched app, runs Compare and waits for the ground truth, the three players and the numbers
under each, steps the chunk slider, scores the shipped example set with one click, uploads a small eval
set, and waits for the tables and charts. Screenshots of each stage are
saved to test-artifacts/ for a person to look at.
"""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest
from test_app_api import REPO, shared_app_url

from mf.constants import FPS, SAMPLE_RATE
from mf.media import write_mp4

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = os.path.join(REPO, "test-artifacts")
TIMEOUT_MS = 120_000

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    os.makedirs(ARTIFACTS, exist_ok=True)
    url = shared_app_url(tmp_path_factory)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.get_by_text("Mutual Forcing studio").first.wait_for()
        yield page
        browser.close()


def _shot(page, name: str):
    page.screenshot(path=os.path.join(ARTIFACTS, name), full_page=True)


def _set_number(page, selector: str, value):
    box = page.locator(f"{selector} input[type=number]").first
    box.fill(str(value))
    box.press("Enter")


def test_landing_page_explains_itself_and_examples_play_at_once(page):
    # is_visible() does not wait and Gradio renders the tabs with JS after the title: wait for each one
    # (a visible-state wait that fails after TIMEOUT_MS if the element never shows).
    page.get_by_text("Limits on this Space").first.wait_for(state="visible")
    for tab in ("Talk (stream)", "Compare 4 · 8 · 50 steps", "Chunks", "Evaluate", "About"):
        page.get_by_role("tab", name=tab).wait_for(state="visible")
    _shot(page, "app-01-landing.png")
    started = time.perf_counter()
    page.locator('[data-testid="dataset-cell-0-0"]').first.click()
    page.locator("#stream-full video").wait_for()
    # Cached at startup: the clip is served, not generated, so it shows up well within a few seconds.
    assert time.perf_counter() - started < 15


def test_stream_plays_and_offers_the_full_clip(page):
    _set_number(page, "#stream-seed", 5)
    _set_number(page, "#stream-seconds", 1.5)
    page.locator("#stream-run").click()
    page.locator("#stream-status").get_by_text("done").wait_for()
    page.locator("#stream-live video").wait_for()
    page.locator("#stream-full video").wait_for()
    _shot(page, "app-02-stream.png")


def test_compare_fills_the_ground_truth_and_three_players_with_numbers(page):
    page.get_by_role("tab", name="Compare 4 · 8 · 50 steps").click()
    assert not page.locator("#compare-seed-used input").is_visible()  # no "Seed used: 0" before anything ran
    _set_number(page, "#compare-seed", 3)
    _set_number(page, "#compare-seconds", 0.5)
    page.locator("#compare-run").click()
    page.locator("#compare-video-truth video").wait_for()
    page.locator("#compare-stats-truth").get_by_text("ground truth").first.wait_for()
    for steps in (4, 8, 50):
        page.locator(f"#compare-video-{steps} video").wait_for()
        page.locator(f"#compare-stats-{steps}").get_by_text("RTF").first.wait_for()
        numbers = page.locator(f"#compare-stats-{steps}").inner_text()
        assert re.search(r"feature distance \d+\.\d+", numbers) and re.search(r"log-mel distance \d+\.\d+ dB", numbers)
        assert re.search(r"sync [+-]\d+ ms", numbers)
    page.locator("#compare-seed-used input").wait_for()
    assert page.locator("#compare-seed-used input").input_value() == "3"
    assert "off" in page.locator("#compare-stats-B").inner_text()  # the naive baseline waits for its box
    _shot(page, "app-03-compare.png")
    page.locator("#compare-baseline input").check()
    page.locator("#compare-run").click()
    page.locator("#compare-video-B video").wait_for(timeout=300_000)
    page.locator("#compare-stats-B").get_by_text("RTF").first.wait_for()
    assert "plain Euler" in page.locator("#compare-stats-B").inner_text()


def test_chunk_slider_steps_through_chunks(page):
    page.get_by_role("tab", name="Chunks").click()
    _set_number(page, "#chunks-seed", 4)
    _set_number(page, "#chunks-seconds", 0.5)
    page.locator("#chunks-run").click()
    page.locator("#chunk-info").get_by_text("Chunk 0 of 2").wait_for()
    page.locator("#chunk-trajectory .js-plotly-plot").wait_for()
    _set_number(page, "#chunk-slider", 2)
    page.locator("#chunk-info").get_by_text("Chunk 2 of 2").wait_for()
    assert page.locator("#chunk-steps img").count() >= 4
    _shot(page, "app-04-chunks.png")
    # Keep chunks 0..1, regenerate chunk 2 with a new seed.
    _set_number(page, "#chunk-slider", 1)
    page.locator("#chunk-info").get_by_text("Chunk 1 of 2").wait_for()
    _set_number(page, "#chunks-new-seed", 9)
    page.locator("#chunks-continue").click()
    page.locator("#chunks-summary").get_by_text("seed 9").first.wait_for()


def test_the_example_set_is_scored_with_one_click(page):
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-examples").click()
    page.locator("#eval-table").get_by_text("ex03").first.wait_for()
    for i in range(3):
        page.locator(f"#eval-plot-{i} .js-plotly-plot").wait_for()
    page.locator("#eval-downloads").get_by_text("eval-report").first.wait_for()
    assert page.locator("#eval-summary").inner_text().strip()
    _shot(page, "app-05-evaluate-examples.png")


def test_evaluate_shows_table_and_chart(page, tmp_path):
    from mf.data import render_clip

    # Same stems on both sides: eval pairs generated and reference clips by file name.
    gdir, rdir = tmp_path / "gen", tmp_path / "ref"
    gdir.mkdir()
    rdir.mkdir()
    gen, ref = [], []
    for i in range(2):
        clip = render_clip(1_000_000_100 + i, 1.5, character_id=i)
        ref.append(write_mp4(rdir / f"clip{i}.mp4", clip.frames, FPS, clip.audio, SAMPLE_RATE))
        noisy = np.clip(clip.audio + 0.02 * np.random.default_rng(i).normal(size=clip.audio.shape), -1, 1)
        gen.append(write_mp4(gdir / f"clip{i}.mp4", clip.frames, FPS, noisy.astype(np.float32), SAMPLE_RATE))
    page.get_by_role("tab", name="Evaluate").click()
    page.locator("#eval-gen input[type=file]").set_input_files([str(p) for p in gen])
    page.locator("#eval-ref input[type=file]").set_input_files([str(p) for p in ref])
    page.locator("#eval-windows textarea, #eval-windows input").first.fill("0-1")
    page.locator("#eval-run").click()
    page.locator("#eval-table").get_by_text("clip1").first.wait_for()
    page.locator("#eval-plot-0 .js-plotly-plot, #eval-plot-1 .js-plotly-plot").first.wait_for()
    page.locator("#eval-downloads").get_by_text("eval-report").first.wait_for()  # stem and .ext are separate spans
    _shot(page, "app-06-evaluate.png")


def test_about_names_the_method_and_how_to_cite(page):
    page.get_by_role("tab", name="About").click()
    page.get_by_text("How to cite").first.wait_for()
    page.get_by_text("arXiv:2604.25819").first.wait_for(state="visible")
    _shot(page, "app-07-about.png")
