"""Specification of the procedural corpus (mf.data): determinism, identities, alignment, shift, datasets."""

import numpy as np
import pytest

from mf.constants import FPS, SAMPLES_PER_FRAME
from mf.data import (
    CHARACTER_ATTR_DIM,
    CorpusDataset,
    FolderDataset,
    Phone,
    character,
    phone_ids,
    render_clip,
    render_frames,
    text_to_phones,
)


def test_same_seed_gives_bitwise_identical_clip():
    a, b = render_clip(5, 1.0), render_clip(5, 1.0)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert a.frames.shape == (25, 64, 64, 3) and a.frames.dtype == np.uint8
    assert a.audio.shape == (25 * SAMPLES_PER_FRAME,) and a.audio.dtype == np.float32


@pytest.mark.parametrize("kwargs", [dict(seed=3, seconds=1 / FPS), dict(seed=8, seconds=0.6, text="hello there"),
                                    dict(seed=11, seconds=0.4, character_id=42, size=48)])
def test_frames_without_the_voice_are_the_clips_frames_bit_for_bit(kwargs):
    clip = render_clip(**kwargs)
    frames, char = render_frames(**kwargs)
    assert frames.dtype == np.uint8 and np.array_equal(frames, clip.frames)
    assert np.array_equal(char.attributes(), clip.character.attributes())


def test_different_seeds_give_different_characters():
    a, b = render_clip(1, 0.4), render_clip(2, 0.4)
    assert not np.array_equal(a.frames, b.frames)
    assert not np.array_equal(a.character.attributes(), b.character.attributes())


def test_ten_thousand_distinct_looks():
    attrs = np.stack([character(i).attributes() for i in range(10_000)])
    assert attrs.shape == (10_000, CHARACTER_ATTR_DIM)
    assert np.all(np.abs(attrs) <= 1.0)
    assert len({row.tobytes() for row in np.round(attrs, 3)}) == 10_000


def test_shift_moves_audio_sample_exactly():
    base = render_clip(9, 2.0)
    shifted = render_clip(9, 2.0, shift_ms=40.0)
    k = 640  # 40 ms at 16 kHz: audio leads, so shifted[n] == base[n + k]
    assert shifted.shift_ms == 40.0
    assert np.array_equal(shifted.audio[:-k], base.audio[k:])
    assert np.array_equal(shifted.frames, base.frames)


def test_voiced_onsets_coincide_with_mouth_opening():
    clip = render_clip(4, 4.0, text="ma ma ma papa ma")
    env = np.sqrt((clip.audio.reshape(-1, SAMPLES_PER_FRAME) ** 2).mean(axis=1))
    loud = env > 0.25 * env.max()
    vowels = [p for p in clip.phones if p.symbol in ("aa", "ah", "ae")]
    assert vowels
    mouth = clip.frames[:, 38:52, 20:44].astype(float).mean(axis=(1, 2, 3))
    closed = np.median(mouth[:4])
    for v in vowels:
        i = int(round((v.start + v.end) / 2 * FPS))
        assert loud[max(i - 1, 0):i + 2].any(), f"no sound at vowel {v}"
        assert abs(mouth[i] - closed) > 1.0, f"mouth region unchanged (closed) at vowel {v}"


def _syllable_onsets_matched_by_mouth_motion(clip) -> list[bool]:
    """For each audio onset (loudness switching on): does the mouth region move within one frame?"""
    env = np.sqrt((clip.audio.reshape(-1, SAMPLES_PER_FRAME) ** 2).mean(axis=1))
    loud = env > 0.3 * env.max()
    onsets = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
    mouth = clip.frames[:, 34:56, 16:48].astype(float)
    motion = np.r_[0.0, np.abs(np.diff(mouth, axis=0)).mean(axis=(1, 2, 3))]
    return [motion[max(o - 1, 0):o + 2].max() > 0.4 * motion.max() for o in onsets]


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_every_syllable_onset_in_the_audio_has_a_mouth_opening_within_one_frame(seed):
    # "pa" syllables between pauses: an unvoiced closure, then the burst and the vowel open the
    # mouth and start the sound together.
    matched = _syllable_onsets_matched_by_mouth_motion(render_clip(seed, 4.0, text="pa, pa, pa, pa, pa"))
    assert len(matched) >= 4 and all(matched), matched


def test_the_onset_check_fails_when_audio_is_shifted_by_three_frames():
    clip = render_clip(11, 4.0, text="pa, pa, pa, pa, pa", shift_ms=120.0)
    assert not all(_syllable_onsets_matched_by_mouth_motion(clip))


def test_text_to_phones_is_sensible_and_monotone():
    phones = text_to_phones("hello there")
    symbols = [p.symbol for p in phones if p.symbol != "sil"]
    assert symbols == ["hh", "ah", "l", "ow", "dh", "eh", "r"]
    starts = [p.start for p in phones]
    assert all(p.end > p.start for p in phones) and starts == sorted(starts)


def test_phone_ids_and_bad_arguments():
    ids = phone_ids([Phone("aa", 0.0, 0.1)], 20, 100.0)
    assert ids.dtype == np.int64 and ids.shape == (20,) and (ids[:10] != 0).all() and (ids[10:] == 0).all()
    with pytest.raises(ValueError, match="unknown phoneme"):
        phone_ids([Phone("xx", 0.0, 0.1)], 4, 100.0)
    with pytest.raises(ValueError, match="unknown phoneme"):
        text_to_phones("say [hh zz]")
    with pytest.raises(ValueError, match="seconds"):
        render_clip(0, 0.0)


def test_corpus_dataset_keys_and_split_guard():
    item = CorpusDataset((0, 2), seconds=0.4)[1]
    assert item["frames"].shape == (10, 64, 64, 3) and item["phone_ids"].shape == (40,)
    assert item["audio"].shape == (6400,) and item["attributes"].shape == (CHARACTER_ATTR_DIM,)
    with pytest.raises(ValueError, match="held out"):
        CorpusDataset([1_000_000_000], seconds=0.4)


def test_folder_dataset_round_trip_and_missing_audio(tmp_path):
    from mf.media import NoAudioStreamError, read_av, write_mp4
    clip = render_clip(7, 2.0)
    path = write_mp4(tmp_path / "a.mp4", clip.frames, audio=clip.audio)
    back = read_av(path)
    n = min(len(back.audio), len(clip.audio))
    lag = 1024
    corr = max(np.corrcoef(back.audio[s:n - lag + s], clip.audio[:n - lag])[0, 1] for s in range(lag))
    assert corr > 0.9
    assert np.abs(back.frames[:50].astype(int) - clip.frames.astype(int)).mean() < 8
    ds = FolderDataset(tmp_path, seconds=1.0, crop="center")
    assert len(ds) == 2 and ds[0]["phone_ids"].eq(1).all()
    write_mp4(tmp_path / "silent.mp4", clip.frames)
    with pytest.raises(NoAudioStreamError, match="silent.mp4"):
        FolderDataset(tmp_path, seconds=1.0)
