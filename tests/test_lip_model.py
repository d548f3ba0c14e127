"""Specification of the sync estimator's second opinion: lip geometry (eval.landmarks), the lip model
(eval.lip_model, fitted by eval.lip_fit) and the "models_disagree" flag of eval.sync."""
import json
import os
import re

import numpy as np
import pytest
from shared_data import REAL_AV_HOWTO

from eval.landmarks import N_LIP_FEATURES, FaceMeshTrack, lip_geometry
from eval.lip_model import LIP_MODEL_PATH, fit_lip_model, load_lip_model, project, save_lip_model
from eval.sync import MAX_SHIFT, SPECTRAL_MELS, estimate_sync, lagged_correlation

REAL = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "real_av")


def _face(rng):
    return rng.uniform(50, 150, size=(468, 2))


def test_lip_geometry_is_in_the_face_own_axes_and_units():
    rng = np.random.default_rng(0)
    pts = _face(rng)
    pts[263] = pts[33] + [40.0, 0.0]  # eye line horizontal, eye distance 40 px
    ang, scale, move = 0.4, 2.5, np.array([30.0, -12.0])
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    moved = pts @ rot.T * scale + move  # the same face rotated, scaled and moved in the picture
    g = lip_geometry(FaceMeshTrack(np.stack([pts, moved]), np.zeros(2)))
    assert g.shape == (2, N_LIP_FEATURES)
    np.testing.assert_allclose(g[0], g[1], atol=1e-9)
    opened = pts.copy()
    opened[14, 1] += 8.0  # lower inner lip 8 px further down: the centre gap grows by 8 / 40 eye distances
    g2 = lip_geometry(FaceMeshTrack(opened[None], np.zeros(1)))
    assert g2[0, 0] - g[0, 0] == pytest.approx(0.2)
    lost = lip_geometry(FaceMeshTrack(np.full((1, 468, 2), np.nan), np.zeros(1)))
    assert np.isnan(lost).all()


def test_mouth_patches_show_the_same_lips_however_the_head_sits_in_the_picture():
    import cv2

    from eval.landmarks import MOUTH_CENTRE, PATCH_SIZE, mouth_patches

    yy, xx = np.mgrid[0:240, 0:320]
    face = (128 + 60 * np.sin(xx / 7.0) * np.cos(yy / 11.0)).astype(np.uint8)  # texture to find again
    pts = np.zeros((468, 2))
    pts[33], pts[263] = [120.0, 80.0], [200.0, 80.0]  # eyes 80 px apart, level
    pts[list(MOUTH_CENTRE)] = [160.0, 150.0]
    ang, scale, move = 0.3, 0.8, np.array([20.0, -10.0])  # the head turned, further away and moved
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) * scale
    frame_to_moved = np.c_[rot, move]
    moved = cv2.warpAffine(face, frame_to_moved, (320, 240), flags=cv2.INTER_LINEAR)
    frames = np.stack([np.repeat(face[..., None], 3, -1), np.repeat(moved[..., None], 3, -1)])
    points = np.stack([pts, pts @ rot.T + move])
    p = mouth_patches(frames, FaceMeshTrack(points, np.zeros(2)))
    assert p.shape == (2, PATCH_SIZE[1], PATCH_SIZE[0]) and p.dtype == np.uint8
    a, b = p[0].astype(float), p[1].astype(float)
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9  # the same pixels of the face, resampled
    assert np.abs(a - b).mean() < 8
    # A frame whose landmarks were lost takes its key points from its neighbours.
    lost = np.stack([pts, np.full((468, 2), np.nan), pts])
    p3 = mouth_patches(np.stack([frames[0]] * 3), FaceMeshTrack(lost, np.zeros(3)))
    np.testing.assert_array_equal(p3[1], p3[0])


def _planted(rng, t=400, lag=0):
    """Audio bands and lips driven by one hidden syllable rhythm; the lips follow it ``lag`` frames later."""
    s = np.convolve(rng.normal(size=t + 40), np.hanning(7), "same")[20: 20 + t]
    bands = rng.normal(size=(t, SPECTRAL_MELS))
    bands[:, 3] += 2.0 * s
    bands[:, 9] -= 1.0 * s
    lips = rng.normal(size=(t, N_LIP_FEATURES))
    lips[:, 0] += 2.0 * np.roll(s, lag)
    return bands, lips, np.ones(t, bool)


def test_lip_model_finds_the_planted_pair_and_its_curve_peaks_at_the_lips_lag():
    rng = np.random.default_rng(1)
    model = fit_lip_model([_planted(rng) for _ in range(4)])
    assert model.canonical_corr[0] > 0.8 and model.canonical_corr[1] < 0.5
    for lag in (0, 5, -4):
        bands, lips, votes = _planted(rng, lag=lag)
        a, v = project(model, bands, lips, votes)
        curve = lagged_correlation(a[:, 0], v[:, 0], MAX_SHIFT, votes)
        assert int(np.argmax(curve)) - MAX_SHIFT == lag
    with pytest.raises(ValueError, match="too few"):
        fit_lip_model([])


def test_lip_model_round_trips_and_the_shipped_fit_records_how_it_was_made(tmp_path):
    rng = np.random.default_rng(2)
    model = fit_lip_model([_planted(rng) for _ in range(2)])
    path = tmp_path / "m.npz"
    save_lip_model(model, path, {"command": "test"})
    back = load_lip_model(str(path))
    np.testing.assert_allclose(back.audio_weights, model.audio_weights, rtol=1e-5)
    assert json.loads((tmp_path / "m.json").read_text())["command"] == "test"
    shipped = load_lip_model()
    assert shipped.n_bands == SPECTRAL_MELS and shipped.lip_weights.shape[0] == N_LIP_FEATURES
    info = json.loads(open(LIP_MODEL_PATH.replace(".npz", ".json")).read())
    assert info["command"].startswith("python -m eval.lip_fit") and len(info["clips"]) >= 20
    assert info["n_frames"] == shipped.n_frames


def test_models_disagree_flags_a_face_whose_lip_shape_tells_another_lag(talk3):
    from dataclasses import replace
    clip, track = talk3
    assert track.lips is not None and track.lips.shape == (len(clip.frames), N_LIP_FEATURES)
    r = estimate_sync(clip.frames, 25, clip.audio, 16000, track=track)
    assert r.flag is None and abs(r.extras["lip_model_offset_frames"] - r.offset_frames) <= 1
    assert r.to_dict()["lip_model_offset_frames"] == r.extras["lip_model_offset_frames"]
    # The same clip with its lip SHAPE moved 6 frames later (the inner-lip opening and the pictures left where
    # they were): the lip model now reads a lag 6 frames away from the estimator's offset (which the opening,
    # the pictures and the envelope still hold, step 5's lip-shape curve being one of four), and the offset
    # must not be reported as a measurement.
    late = replace(track, lips=np.roll(track.lips, 6, axis=0))
    r2 = estimate_sync(clip.frames, 25, clip.audio, 16000, track=late)
    assert abs(r2.offset_frames - r.offset_frames) <= 1
    assert abs(r2.extras["lip_model_offset_frames"] - r2.offset_frames) > 1
    assert r2.flag == "models_disagree" and r2.uncertain, (r2.flag, r2.extras)


@pytest.mark.slow  # ~1 min: three real_av clips tracked twice
@pytest.mark.skipif(not os.path.exists(os.path.join(REAL, "talk3.mp4")), reason=REAL_AV_HOWTO)
def test_leave_one_source_out_fits_a_lip_model_without_each_source(capsys):
    from eval.sync_validate import main, source_of
    assert source_of("/x/lipnet_grid_bbaf2n.mp4") == "lipnet" and source_of("talk1.mp4") == "talk1.mp4"
    main([REAL, "--loso", "--shifts", "2"])
    out = capsys.readouterr().out
    for name in ("talk1.mp4", "talk2.mp4", "talk3.mp4"):  # no "_": each clip is its own source
        assert f"lip model for {name}: fitted on 2 clips of other sources" in out
    assert "3 clips, 12 shifted copies, 3 in-sync" in out


def test_missing_or_broken_lip_model_is_a_clear_error_without_a_server_path(tmp_path):
    from eval.lip_model import LipModelError
    with pytest.raises(LipModelError, match="lip_model.npz") as err:
        load_lip_model(str(tmp_path / "lip_model.npz"))
    assert str(tmp_path) not in str(err.value)
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(LipModelError, match="unreadable: broken.npz") as err:
        load_lip_model(str(tmp_path / "broken.npz"))
    assert str(tmp_path) not in str(err.value)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))  # a valid npz that is not a lip model
    with pytest.raises(LipModelError, match="unreadable: other.npz"):
        load_lip_model(str(tmp_path / "other.npz"))


@pytest.mark.skipif(not os.path.exists(os.path.join(REAL, "talk3.mp4")), reason=REAL_AV_HOWTO)
def test_cli_sync_line_shows_the_lip_shape_reading_beside_the_offset(capsys):
    from eval.__main__ import main
    assert main(["sync", os.path.join(REAL, "talk3.mp4")]) == 0
    line = capsys.readouterr().out
    m = re.search(r"offset ([+-]\d+) frames", line)
    assert m and abs(int(m.group(1))) <= 1, line  # talk3 is published in sync
    assert "mouth localizer: face-mesh, lip-shape model " in line, line


@pytest.mark.skipif(not os.path.exists(os.path.join(REAL, "talk3.mp4")), reason=REAL_AV_HOWTO)
def test_validation_in_two_processes_prints_what_one_process_prints(tmp_path, capsys):
    from eval.sync_validate import main

    for name in ("talk1", "talk3"):
        os.symlink(os.path.abspath(os.path.join(REAL, f"{name}.mp4")), tmp_path / f"{name}.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"not a video")
    outputs = []
    for workers in ("1", "2"):
        main([str(tmp_path), "--shifts", "1", "--workers", workers])
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert "talk1.mp4" in outputs[0] and "talk3.mp4" in outputs[0] and "2 clips, 4 shifted copies" in outputs[0]
    assert "skipped: " in outputs[0] and "broken.mp4" in outputs[0] and str(tmp_path) not in outputs[0]
    assert main([str(tmp_path), "--workers", "0"]) == 2
