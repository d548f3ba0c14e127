"""Ground truth beside the model (eval.compare): the truth is rendered from the generator's own script and
character, the numbers are zero against the truth itself and grow with every kind of mismatch, and the
shipped example set is what the Evaluate tab's one-click button scores."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from eval.compare import ground_truth, logmel_distance_db, measure, psnr_db
from mf.conditions import script_phone_ids
from mf.constants import FPS, HELDOUT_SEED_START, MELS_PER_FRAME
from mf.data.script import phone_ids
from mf.pipeline import character_for

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(REPO, "assets", "examples")


def test_character_rule_is_the_seed_unless_a_character_is_chosen():
    assert character_for(12, None) == 12
    assert character_for(12, 3) == 3


@pytest.mark.parametrize("text", [None, "hello there, how are you"])
def test_ground_truth_says_exactly_the_script_the_generator_is_conditioned_on(text):
    fc = 4  # frames per chunk of the shipped model; 1.1 s = 28 frames = 7 chunks (script span = whole chunks)
    truth = ground_truth(5, 1.1, text=text, frames_per_chunk=fc)
    assert truth.frames.shape[0] == 28 and truth.character.id == 5
    n_mels = 28 * MELS_PER_FRAME
    conditioned, dropped, _ = script_phone_ids(text, n_mels, 5)
    assert not dropped
    np.testing.assert_array_equal(phone_ids(truth.phones, n_mels, FPS * MELS_PER_FRAME), conditioned)
    assert ground_truth(5, 1.1, text=text, character_id=9, frames_per_chunk=fc).character.id == 9


@pytest.fixture(scope="module")
def truths():
    a = ground_truth(HELDOUT_SEED_START + 7, 2.4, text="hello, nice to meet you", frames_per_chunk=4)
    b = ground_truth(HELDOUT_SEED_START + 8, 2.4, text="hello, nice to meet you", frames_per_chunk=4)
    return a, b


def test_a_clip_measured_against_itself_is_at_zero_distance(truths):
    a, _ = truths
    m = measure(a.frames, a.audio, a.frames, a.audio, wall_s=1.2)
    assert m["feature_distance"] == 0 and m["logmel_distance_db"] == 0 and m["psnr_db"] == 100.0
    assert m["rtf"] == pytest.approx(1.2 / 2.4) and m["seconds"] == pytest.approx(2.4)
    assert not m["sync_uncertain"] and m["sync_offset_frames"] == 0  # the corpus is in sync by construction


def test_distances_grow_with_the_mismatch(truths):
    a, b = truths
    rng = np.random.default_rng(0)
    noisy = np.clip(a.audio + 0.01 * rng.normal(size=a.audio.shape), -1, 1).astype(np.float32)
    blurred = ((a.frames.astype(np.int16) + rng.integers(-12, 13, size=a.frames.shape)).clip(0, 255)).astype(np.uint8)
    slightly = measure(blurred, noisy, a.frames, a.audio)
    other = measure(b.frames, b.audio, a.frames, a.audio)
    assert 0 < slightly["logmel_distance_db"] < other["logmel_distance_db"]
    assert 0 < slightly["feature_distance"] < other["feature_distance"]
    assert other["psnr_db"] < slightly["psnr_db"] < 100


def test_a_shifted_voice_is_caught_by_sync_and_by_the_audio_distance(truths):
    a, _ = truths
    shift = 6 * 640  # audio 240 ms late
    late = np.concatenate([np.zeros(shift, np.float32), a.audio[:-shift]])
    m = measure(a.frames, late, a.frames, a.audio)
    assert m["sync_offset_ms"] < -100 and m["logmel_distance_db"] > 3


def test_short_clips_are_marked_uncertain(truths):
    a, _ = truths
    m = measure(a.frames[:30], a.audio[:30 * 640], a.frames[:30], a.audio[:30 * 640])
    assert m["sync_uncertain"] and m["sync_flag"] is not None


def test_metric_inputs_are_checked():
    with pytest.raises(ValueError, match="frames"):
        measure(np.zeros((4, 8, 8, 3), np.uint8), np.zeros(2560), np.zeros((4, 16, 16, 3), np.uint8), np.zeros(2560))
    assert np.isnan(logmel_distance_db(np.zeros(10), np.zeros(10)))
    assert psnr_db(np.zeros((1, 2, 2, 3), np.uint8), np.full((1, 2, 2, 3), 255, np.uint8)) == 0.0


def test_the_example_set_ships_paired_small_and_on_held_out_seeds():
    from eval.examples import example_files

    generated, references = example_files(EXAMPLES)
    assert len(generated) >= 3
    assert [os.path.basename(p) for p in generated] == [os.path.basename(p) for p in references]
    assert sum(os.path.getsize(p) for p in generated + references) < 3_000_000
    with open(os.path.join(EXAMPLES, "manifest.json")) as fh:
        manifest = json.load(fh)
    assert all(c["seed"] >= HELDOUT_SEED_START for c in manifest["clips"])
    assert manifest["command"].startswith("python -m eval.examples")
