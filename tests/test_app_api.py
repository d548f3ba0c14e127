"""The workbench, driven the way a script or a Space visitor's browser drives it: over its API.

First the plain input rules (no server). Then one app launched in a subprocess on 127.0.0.1 and a
free port, driven with gradio_client: every public api_name returns real, playable mp4 files with
an audio stream of the expected length and sane timing numbers; bad input is a readable error;
same seed, same output; four simultaneous users each get their own, correct result. The API fits
scripts: every output is named, optional inputs are optional, the README's gradio_client example runs
as written; Compare comes with the ground truth and numbers, the example set is scored in one call.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import socket
import subprocess
import sys
import threading
import time
import zipfile

import numpy as np
import pytest

from app import limits
from app.plots import trajectory_figure
from app.runs import InputError, check_seconds, check_text, parse_character, resolve_seed
from mf.constants import FPS, SAMPLE_RATE
from mf.media import read_av, write_mp4

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- input rules
def test_seed_minus_one_picks_a_fresh_seed_and_explicit_seeds_are_kept():
    assert resolve_seed(17) == 17
    assert resolve_seed("17") == 17
    picked = {resolve_seed(-1) for _ in range(5)}
    assert all(0 <= s <= limits.MAX_SEED for s in picked) and len(picked) > 1


@pytest.mark.parametrize("bad", [1.5, "abc", -2, 2**40])
def test_bad_seeds_are_refused_with_a_sentence(bad):
    with pytest.raises(InputError, match="Seed"):
        resolve_seed(bad)


def test_length_is_capped_and_the_message_names_the_cap():
    assert check_seconds(2, 6.0) == 2.0
    with pytest.raises(InputError, match="limit of 6 s"):
        check_seconds(7, 6.0)
    with pytest.raises(InputError, match="at least"):
        check_seconds(0.1, 6.0)


def test_text_and_character_parsing():
    assert check_text("  ") is None
    assert check_text(" hi ") == "hi"
    with pytest.raises(InputError, match="limit"):
        check_text("x" * (limits.MAX_TEXT_CHARS + 1))
    assert parse_character("random") is None
    assert parse_character("7") == 7
    assert parse_character("#3 · round teal head") == 3
    with pytest.raises(InputError, match="Character"):
        parse_character("teal")


def test_trajectory_plot_projects_both_step_counts_into_one_basis():
    rng = np.random.default_rng(0)
    target = rng.normal(size=(2, 4, 2, 2))
    noise = rng.normal(size=target.shape)
    path = lambda n: [((1 - (i + 1) / n) * noise + (i + 1) / n * target, rng.normal(size=(8, 3))) for i in range(n)]
    fig = trajectory_figure({4: path(4), 50: path(50)})
    assert [t.name for t in fig.data] == ["4 steps", "50 steps"]
    assert len(fig.data[0].x) == 4 and len(fig.data[1].x) == 50
    with pytest.raises(ValueError, match="different sizes"):
        trajectory_figure({4: [np.zeros(3)], 50: [np.zeros(5)]})


def test_eval_summary_shows_scored_metrics_and_drops_unscored_ones():
    from app.evaluate import _rows, summary_markdown

    summary = {"n_clips": 3, "n_errors": 1, "pesq_wb_median": 3.21, "pesq_wb_mean": 3.0, "pesq_wb_n": 2,
               "stoi_median": float("nan"), "stoi_mean": float("nan"), "stoi_n": 0, "fid": 12.5,
               "fid_note": "FID/KID skipped", "windows": [{"window": "0-5s", "n_clips": 2, "pesq_wb_median": 3.3,
                                                           "stoi_median": float("nan")}]}
    text = summary_markdown(summary, 3, 2)
    assert "| pesq_wb | 3.21 | 3 | 2 |" in text
    assert "stoi" not in text and "fid: **12.5**" in text and "n errors: **1**" in text
    assert "| 0-5s | 2 | 3.3 |" in text
    table = _rows([{"name": "a", "pesq_wb": 3.21234, "stoi": float("nan"), "error": "", "curve": [1, 2]},
                   {"name": "b", "pesq_wb": float("nan"), "stoi": float("nan"), "error": "b.mp4: not a video",
                    "curve": [1]}])
    assert list(table.columns) == ["name", "pesq_wb", "error"] and table["pesq_wb"][0] == 3.212


def test_upload_clip_limit_counts_media_inside_zips(tmp_path, monkeypatch):
    from app.evaluate import count_clips

    monkeypatch.setattr(limits, "MAX_EVAL_CLIPS", 2)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for name in ("a.mp4", "b.mp4", "__MACOSX/._a.mp4", "notes.txt"):
            z.writestr(name, b"x")
    assert count_clips([str(archive)], "Generated set") == 2
    loose = tmp_path / "c.mp4"
    loose.write_bytes(b"x")
    with pytest.raises(InputError, match="3 clips uploaded; the limit is 2 per set"):
        count_clips([str(archive), str(loose)], "Generated set")
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="Generated set: bad.zip: not a readable zip archive"):
        count_clips([str(tmp_path / "bad.zip")], "Generated set")


def test_evaluate_extracts_zips_inside_the_request_folder_and_removes_them(tmp_path):
    from app.evaluate import run_evaluation
    from eval.score import score_sets

    request = tmp_path / "evaluate-req"
    request.mkdir()
    archive = tmp_path / "gen.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(write_mp4(tmp_path / "a.mp4", np.zeros((30, 16, 16, 3), np.uint8), FPS), "a.mp4")
        z.writestr("cover.png", b"\x89PNG not really")
    seen = []

    def progress(frac, desc=""):
        seen.append(sorted(os.listdir(request)))

    summary, table, *_figs, files, _notes = run_evaluation(score_sets, None, [str(archive)], None, ["sync"], "",
                                                           str(request), progress)
    assert any(any(n.startswith("unzipped-") for n in names) for names in seen)  # extracted in the request folder
    assert not [n for n in os.listdir(request) if n.startswith("unzipped-")]  # and removed after scoring
    rows = {r["name"]: r for r in table.to_dict("records")}
    assert "unsupported file type '.png'" in rows["cover"]["error"] and rows["cover"]["file"] == "gen.zip/cover.png"
    assert str(tmp_path) not in table.to_csv() and all(os.path.dirname(f) == str(request) for f in files)


def test_every_request_gets_its_own_folder_and_old_ones_are_swept(tmp_path):
    from app.workspace import Workspace

    ws = Workspace(str(tmp_path), max_age_s=60)
    a, b = ws.new_dir("compare"), ws.new_dir("compare")
    assert a != b and os.path.isdir(a) and os.path.isdir(b) and os.path.dirname(a) == str(tmp_path)
    os.utime(a, (time.time() - 3600, time.time() - 3600))
    ws.new_dir("stream")
    assert not os.path.exists(a) and os.path.isdir(b)


# ----------------------------------------------------------------------------- launched app
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def launched_app(work, **env_extra):
    """`python app.py` on a free port in a subprocess; yields its URL once it answers (shared with the browser test)."""
    import urllib.request

    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
               MF_APP_WORKDIR=str(work), GRADIO_ANALYTICS_ENABLED="False", PYTHONPATH=REPO, **env_extra)
    log_path = os.path.join(work, "server.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}/"
        deadline = time.time() + 240
        try:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"app.py exited with {proc.returncode}: {open(log_path).read()[-3000:]}")
                try:
                    urllib.request.urlopen(url, timeout=2)
                    break
                except OSError:
                    if time.time() > deadline:
                        raise RuntimeError(f"app.py did not answer in 240 s: {open(log_path).read()[-3000:]}") from None
                    time.sleep(1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


_SHARED_APP: dict = {}


def shared_app_url(tmp_path_factory) -> str:
    """One launched app per test process, shared by this file and the browser test (startup is the slow part)."""
    if "url" not in _SHARED_APP:
        ctx = launched_app(tmp_path_factory.mktemp("app-work"))
        _SHARED_APP["url"] = ctx.__enter__()
        atexit.register(ctx.__exit__, None, None, None)
    return _SHARED_APP["url"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    return shared_app_url(tmp_path_factory)


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server, verbose=False)


def _video_path(value) -> str:
    path = value.get("video") if isinstance(value, dict) else value
    assert path and os.path.isfile(path), f"no video file in {value!r}"
    return path


def _check_clip(value, seconds: float, *, trained: bool = False):
    """A playable mp4 with audio; video and audio both last the requested time (last chunk cut to length)."""
    clip = read_av(_video_path(value))
    n = clip.frames.shape[0]
    assert n == round(seconds * FPS), (n, seconds)
    assert clip.audio is not None
    # AAC pads to whole 1024-sample frames; more than ~0.1 s of drift would be a muxing bug.
    assert abs(clip.audio.shape[0] / SAMPLE_RATE - n / FPS) < 0.1
    assert np.isfinite(clip.audio).all()
    if trained:  # initial weights may decode to flat frames; trained ones must not
        assert clip.frames.std() > 0 and np.abs(clip.audio).max() > 1e-3
    return clip


def _check_stats(stats: dict, steps: int):
    assert stats["steps"] == steps and stats["chunks"] >= 1
    assert stats["wall_s"] > 0 and stats["rtf"] > 0 and stats["generation_fps"] > 0
    assert stats["nfe"] >= steps * stats["chunks"]
    assert 0.0 <= stats["decode_share"] <= 1.0
    # The pipeline samples chunk k+1 while chunk k decodes, so model + decode may exceed the wall time,
    # but the network alone runs once per chunk, one after another, inside the wall time.
    assert 0 < stats["model_s"] <= stats["wall_s"] * 1.05 and stats["decode_s"] > 0


def test_the_page_names_every_api(client):
    api = client.view_api(print_info=False, return_format="dict")
    names = set(api["named_endpoints"])
    assert {"/generate", "/compare", "/chunks", "/stream", "/evaluate", "/evaluate_examples"} <= names


def test_every_api_output_is_named_and_optional_inputs_are_optional(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    unnamed = [(name, r["label"]) for name, ep in api.items() for r in ep["returns"]
               if not r["label"] or r["label"].startswith("value_")]
    assert not unnamed, unnamed
    required = {name: [p["parameter_name"] for p in ep["parameters"] if not p["parameter_has_default"]]
                for name, ep in api.items()}
    assert required["/evaluate"] == ["generated_files"]  # references are optional (sync needs none)
    assert required["/generate"] == required["/compare"] == []  # text may be left out: random babble


def test_the_readme_api_example_runs_as_written(server, tmp_path):
    """The README's gradio_client block, run unchanged except for the address of this test's server."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    section = readme.split("## Use it from a script", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    assert 'Client("http://127.0.0.1:7860/")' in code
    script = tmp_path / "readme_example.py"
    script.write_text(code.replace("http://127.0.0.1:7860/", server))
    done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=REPO))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "ex00" in done.stdout and "rtf" in done.stdout, done.stdout


def test_generate_returns_a_clip_of_the_requested_length(client):
    video, seed, stats = client.predict("hello there", "random", 5, 1.0, "4", api_name="/generate")
    assert seed == 5 and stats["seed"] == 5
    _check_stats(stats, 4)
    assert stats["weights"] in ("trained", "initial (untrained)")
    _check_clip(video, 1.0, trained=stats["weights"] == "trained")


def test_a_talk_clip_is_measured_against_its_ground_truth(client):
    from gradio_client import handle_file

    video, seed, stats = client.predict("hello there, nice to meet you", "4", 11, 2.0, "4", api_name="/generate")
    assert stats["character"] == 4 and stats["text"] == "hello there, nice to meet you"
    truth, notes = client.predict(handle_file(_video_path(video)), stats, api_name="/talk_truth")
    _check_clip(truth, 2.0)
    assert "character 4" in notes and "feature distance" in notes and "log-mel distance" in notes
    assert "RTF" in notes and "sync" in notes


def test_seed_minus_one_is_replaced_by_the_seed_actually_used(client):
    _, seed, stats = client.predict("", "random", -1, 0.5, "1", api_name="/generate")
    assert 0 <= seed <= limits.MAX_SEED and stats["seed"] == seed


def test_bad_input_is_a_readable_error(client):
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match=r"limit of|greater than maximum value 20"):
        client.predict("", "random", 1, limits.MAX_SECONDS_STREAM + 5, "4", api_name="/generate")
    with pytest.raises(AppError, match="Character must be a character number or 'random'"):
        client.predict("", "teal", 1, 1.0, "4", api_name="/generate")


def test_compare_runs_4_then_8_then_50_steps_on_one_seed_beside_the_ground_truth(client):
    job = client.submit("", "random", 3, 0.5, api_name="/compare")
    final = job.result(timeout=600)
    updates = job.outputs()
    # The 4-step player is filled while the 50-step one is still empty: results arrive as they finish.
    assert any(u[3] is not None and u[7] is None for u in updates)
    seed, truth, truth_notes, v4, s4, v8, s8, v50, s50, table, v_b, s_b = final
    assert seed == 3
    assert v_b is None and "off" in s_b and "B" not in table["runs"]  # the baseline panel is off by default
    for v in (truth, v4, v8, v50):
        _check_clip(v, 0.5)
    assert "ground truth" in truth_notes and "sync" in truth_notes
    for notes in (s4, s8, s50):  # a 0.5 s clip is too short for a sure sync estimate: said so
        assert "feature distance" in notes and "log-mel distance" in notes and "uncertain" in notes
    for steps in ("4", "8", "50"):
        vs = table["runs"][steps]["vs_ground_truth"]
        assert vs["feature_distance"] > 0 and vs["logmel_distance_db"] > 0 and vs["sync_uncertain"] is True
        assert vs["rtf"] == pytest.approx(table["runs"][steps]["rtf"], rel=0.01)
    runs = table["runs"]
    for steps in (4, 8, 50):
        _check_stats(runs[str(steps)], steps)
        assert runs[str(steps)]["seed"] == 3
    assert runs["4"]["nfe"] < runs["8"]["nfe"] < runs["50"]["nfe"]
    assert "RTF" in s4 and "network evaluations" in s50


def test_compare_adds_the_naive_4_step_baseline_with_the_same_seed_when_asked(client):
    final = client.predict("", "random", 3, 0.5, True, api_name="/compare")
    seed, truth, _, v4, s4, _, _, _, _, table, v_b, s_b = final
    assert seed == 3
    _check_clip(v_b, 0.5)
    runs = table["runs"]
    assert runs["B"]["seed"] == 3 and runs["B"]["sampler_mode"] == "multi"
    assert runs["B"]["nfe"] == runs["4"]["nfe"]  # equal cost: 4 network passes per chunk in both panels
    assert "plain Euler" in s_b and "RTF" in s_b and "feature distance" in s_b
    # the same seed and noise, another sampler: the two 4-step clips differ
    assert runs["B"]["vs_ground_truth"]["feature_distance"] != runs["4"]["vs_ground_truth"]["feature_distance"]


def test_chunks_returns_one_chunk_view_with_its_step_previews(client):
    out = client.predict("", "random", 4, 1.0, "4", api_name="/chunks")
    slider, full, summary, trajectory, stats, clip, audio, steps_gallery, info, timing = out
    _check_stats(stats, 4)
    _check_clip(full, 1.0)
    chunk = read_av(_video_path(clip))
    assert chunk.frames.shape[0] == math.ceil(stats["frames"] / stats["chunks"])  # only the last chunk is cut
    assert len(steps_gallery) == 4  # one decoded preview per denoising step
    assert "Chunk 0" in info and trajectory is not None


def test_stream_ends_with_the_full_clip(client):
    job = client.submit("", "random", 6, 2.0, "4", api_name="/stream")
    job.result(timeout=600)
    outputs = job.outputs()
    _, final_status, full, seed, stats = outputs[-1]
    assert "done" in final_status and seed == 6
    _check_stats(stats, 4)
    _check_clip(full, 2.0)


def test_four_simultaneous_users_get_their_own_results(client, server):
    from gradio_client import Client

    results: dict[int, tuple] = {}
    errors: list[BaseException] = []

    def user(seed: int):
        try:
            results[seed] = Client(server, verbose=False).predict("", "random", seed, 1.0, "4", api_name="/generate")
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=user, args=(s,)) for s in (21, 22, 23, 24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors, errors
    assert sorted(results) == [21, 22, 23, 24]
    paths = {_video_path(r[0]) for r in results.values()}
    assert len(paths) == 4
    for seed, (_video, used, stats) in results.items():
        assert used == seed and stats["seed"] == seed
    clips = {s: read_av(_video_path(r[0])) for s, r in results.items()}
    same = lambda a, b: np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)  # noqa: E731
    assert not same(clips[21], clips[22])
    # Same seed, same output, also under concurrency: each user got what a lone request gets.
    alone = read_av(_video_path(client.predict("", "random", 23, 1.0, "4", api_name="/generate")[0]))
    assert same(alone, clips[23])


# ----------------------------------------------------------------------------- evaluate
def _eval_sets(tmp_path, n: int = 2):
    from mf.data import render_clip

    gen_dir, ref_dir = tmp_path / "gen", tmp_path / "ref"
    gen_dir.mkdir()
    ref_dir.mkdir()
    for i in range(n):
        clip = render_clip(1_000_000_000 + i, 1.5, character_id=i)
        write_mp4(ref_dir / f"clip{i}.mp4", clip.frames, FPS, clip.audio, SAMPLE_RATE)
        noisy = np.clip(clip.audio + 0.02 * np.random.default_rng(i).normal(size=clip.audio.shape), -1, 1)
        write_mp4(gen_dir / f"clip{i}.mp4", clip.frames, FPS, noisy.astype(np.float32), SAMPLE_RATE)
    (gen_dir / "broken.mp4").write_bytes(b"this is not a video")
    zpath = tmp_path / "gen.zip"
    with zipfile.ZipFile(zpath, "w") as z:
        for p in sorted(gen_dir.iterdir()):
            z.write(p, p.name)
    return zpath, sorted(ref_dir.iterdir())


def test_evaluate_scores_uploads_and_reports_bad_files_as_rows(client, tmp_path):
    from gradio_client import handle_file

    zpath, refs = _eval_sets(tmp_path)
    out = client.predict([handle_file(str(zpath))], [handle_file(str(p)) for p in refs], ["sync", "pesq"],
                         "0-1", api_name="/evaluate")
    summary, table, offsets, pesq_fig, windows_fig, files, notes = out
    rows = table["data"]
    headers = table["headers"]
    assert len(rows) == 3
    by_name = {r[headers.index("name")]: r for r in rows}
    assert "broken" in str(by_name["broken"][headers.index("error")])
    pesq = [float(by_name[f"clip{i}"][headers.index("pesq_wb")]) for i in range(2)]
    assert all(1.0 < p <= 4.7 for p in pesq), pesq
    assert "generated" in summary
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["eval-report.csv", "eval-report.json"]
    assert offsets is not None


def test_the_example_set_is_scored_in_one_call(client):
    summary, table, offsets, pesq_fig, windows_fig, files, notes = client.predict(
        ["sync", "pesq"], "0-3,3-6", api_name="/evaluate_examples")
    headers, rows = table["headers"], table["data"]
    assert [r[headers.index("name")] for r in rows] == ["ex00", "ex01", "ex02", "ex03"]
    assert all(1.0 <= float(r[headers.index("pesq_wb")]) <= 4.7 for r in rows)
    assert offsets is not None and pesq_fig is not None and windows_fig is not None
    assert sorted(os.path.basename(f) for f in files) == ["eval-report.csv", "eval-report.json"]


def test_evaluate_gives_stray_files_their_own_rows_and_survives_a_four_minute_reference(client, tmp_path):
    """The issue's server killer (a ~4 min reference wav, PESQ) plus files the app used to refuse outright."""
    import soundfile as sf
    from gradio_client import handle_file

    from mf.data import render_clip

    clip = render_clip(1_000_000_100, 3.0)
    gen, ref = tmp_path / "gen", tmp_path / "ref"
    gen.mkdir(), ref.mkdir()
    write_mp4(gen / "long.mp4", clip.frames, FPS, clip.audio, SAMPLE_RATE)
    sf.write(ref / "long.wav", np.tile(clip.audio, 90), SAMPLE_RATE)  # 270 s
    sf.write(gen / "voice.flac", clip.audio, SAMPLE_RATE)
    sf.write(ref / "voice.flac", clip.audio, SAMPLE_RATE)
    (gen / "cover.png").write_bytes(b"\x89PNG not really")
    (gen / "odd.avi").write_bytes(b"not a video either")
    gen_files = [handle_file(str(gen / n)) for n in ("long.mp4", "voice.flac", "cover.png", "odd.avi")]
    out = client.predict(gen_files, [handle_file(str(ref / n)) for n in ("long.wav", "voice.flac")], ["pesq"], "",
                         api_name="/evaluate")
    table = out[1]
    rows = {r[table["headers"].index("name")]: dict(zip(table["headers"], r)) for r in table["data"]}
    assert set(rows) == {"long", "voice", "cover", "odd"}
    assert 1.0 < float(rows["long"]["pesq_wb"]) <= 4.7 and "decode cap" in rows["long"]["note"]
    assert float(rows["voice"]["pesq_wb"]) > 4.0
    assert "cover.png: unsupported file type '.png'" in rows["cover"]["error"]
    assert rows["odd"]["error"].startswith("odd.avi: unpaired")  # an .avi is a media type: paired, not refused
    text = str(table)
    assert "/tmp" not in text and "gradio" not in text and "Traceback" not in text
    # The server is still there for the next request.
    assert client.predict(gen_files[:1], None, ["sync"], "", api_name="/evaluate")[1]["data"]


def test_evaluate_without_references_refuses_reference_metrics(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    dummy = tmp_path / "a.mp4"
    write_mp4(dummy, np.zeros((25, 16, 16, 3), np.uint8), FPS, np.zeros(SAMPLE_RATE, np.float32), SAMPLE_RATE)
    with pytest.raises(AppError, match="reference"):
        client.predict([handle_file(str(dummy))], None, ["pesq"], "", api_name="/evaluate")
