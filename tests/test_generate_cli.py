"""Specification of ``python -m mf.generate``: an mp4 with audio of the right length and a stats JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mf.generate import main
from mf.media import read_av

REQUIRED_KEYS = {"steps", "nfe", "seconds", "wall_seconds", "rtf", "first_chunk_seconds", "seed", "trained",
                 "checkpoint", "mode", "cache_writes", "weights"}


def cli(tmp_path, *extra):
    return ["--preset", "micro", "--codec-preset", "micro", "--assets", str(tmp_path / "no_assets"), *extra]


def test_cli_writes_mp4_with_audio_and_stats_json(tmp_path, capsys):
    out, stats_path = tmp_path / "clip.mp4", tmp_path / "stats.json"
    rc = main(cli(tmp_path, "--steps", "2", "--seconds", "0.4", "--seed", "3", "--text", "hi there",
                  "--character", "11", "--out", str(out), "--json", str(stats_path)))
    assert rc == 0
    printed = capsys.readouterr().out
    assert "INITIAL WEIGHTS" in printed and "clip.mp4" in printed
    clip = read_av(str(out))
    assert clip.n_frames == 10 and clip.frames.shape[1:] == (64, 64, 3)
    assert clip.audio is not None
    assert abs(clip.audio.shape[0] - 0.4 * clip.sample_rate) <= 160  # the written length, within 10 ms
    stats = json.loads(stats_path.read_text())
    assert REQUIRED_KEYS <= set(stats)
    assert stats["steps"] == 2 and stats["mode"] == "few" and stats["seconds"] == pytest.approx(0.4)
    assert stats["nfe"] == 2 * stats["chunks"] and stats["cache_writes"] == stats["chunks"] - 1
    assert stats["trained"] is False and stats["weights"] == "initial weights" and stats["checkpoint"] is None
    assert stats["rtf"] == pytest.approx(stats["wall_seconds"] / stats["seconds"])
    assert 0 < stats["first_chunk_seconds"] <= stats["wall_seconds"]
    assert stats["character"] == 11 and stats["seed"] == 3


@pytest.mark.parametrize("args, message", [
    (("--steps", "0"), "steps must be"),
    (("--seconds", "0"), "seconds must be a positive"),
    (("--seconds", "1000"), "at most 120"),
    (("--character", "-4"), "unknown character id"),
])
def test_cli_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, message):
    rc = main(cli(tmp_path, *args, "--out", str(tmp_path / "x.mp4")))
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "x.mp4").exists()


def test_cli_rejects_a_non_mp4_output(tmp_path, capsys):
    rc = main(cli(tmp_path, "--out", str(tmp_path / "clip.avi")))
    assert rc == 2 and ".mp4" in capsys.readouterr().err


def test_bench_reports_speed_ratio_first_chunk_memory_and_floors(tmp_path):
    from eval.bench import main as bench_main

    out = tmp_path / "bench.json"
    rc = bench_main(["--preset", "micro", "--codec-preset", "micro", "--assets", str(tmp_path / "none"),
                     "--steps", "4", "50", "--seconds", "0.16", "--rss-marks", "0.16", "0.32", "--json", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["rtf"]) == {"4", "50"} and all(v > 0 for v in result["rtf"].values())
    assert result["nfe"] == {"4": 4 * 2, "50": 50 * 2}  # micro: 0.16 s = 2 chunks
    per_repeat = result["ratio_50_over_4_per_repeat"]
    assert len(per_repeat) == 3 and result["ratio_50_over_4"] == pytest.approx(float(np.median(per_repeat)))
    assert result["ratio_50_over_4_fastest"] == pytest.approx(
        result["runs"]["50"]["wall_seconds"] / result["runs"]["4"]["wall_seconds"])
    assert result["first_chunk_seconds"] > 0 and len(result["first_chunk_seconds_runs"]) == 3
    assert set(result["rss_mb"]) == {"0.16s", "0.32s"} and result["rss60_over_rss10"] > 0
    assert result["trained"] is False and result["hardware"]["torch_threads"] == 1
    assert set(result["floors_passed"]) == {"rtf_4", "ratio_50_over_4", "first_chunk_seconds", "rss60_over_rss10"}
    assert set(result["floors_uncertain"]) <= {"rtf_4", "ratio_50_over_4"}
    assert len(result["ratio_50_over_4_drift_per_repeat"]) == 3   # bracketed by a second 4-step run
    passes = result["pass_ms"]
    assert all(passes[k]["first"] > 0 and passes[k]["rest"] > 0 for k in ("4", "50"))
    assert passes["ratio_50_over_4_from_passes"] > 1


def test_bench_ratio_divides_by_the_mean_of_the_4_step_runs_around_the_50_step_run_and_flags_a_split_verdict():
    from eval.bench import _summary, _verdict

    def run(wall):
        return {"wall_seconds": wall, "rtf": wall / 10, "cpu_seconds": wall, "nfe": 1, "model_cpu_seconds": wall,
                "passes": dict(first=[0.02], rest=[0.02], first_cpu=[0.02], rest_cpu=[0.02], after_steps=[0.0])}

    # a machine slowing down during each repeat: 4-step 5 s before, 6 s after, 50-step 60 s in between
    runs = {"4": [run(5.0), run(5.0)], "50": [run(60.0), run(66.0)]}
    out = _summary(runs, [run(6.0), run(5.0)])
    assert out["ratio_50_over_4_per_repeat"] == pytest.approx([60 / 5.5, 66 / 5.0])
    assert out["ratio_50_over_4_drift_per_repeat"] == pytest.approx([1 / 5.5, 0.0])
    assert _summary(runs)["ratio_50_over_4_per_repeat"] == pytest.approx([12.0, 13.2])   # unbracketed
    assert _verdict([11.2, 11.5], 11.0, at_most=False) == "pass"
    assert _verdict([10.2, 10.9], 11.0, at_most=False) == "fail"
    assert _verdict([10.2, 11.5, 12.0], 11.0, at_most=False) == "uncertain"
    assert _verdict([0.5, 0.9], 1.0, at_most=True) == "pass" and _verdict([0.9, 1.1], 1.0, at_most=True) == "uncertain"


def test_pass_breakdown_pools_repeats_and_implies_the_model_time_ratio():
    from eval.bench import _pass_breakdown

    def run(first, rest, after):
        return {"passes": dict(first=first, rest=rest, first_cpu=first, rest_cpu=rest, after_steps=after)}

    # 4 steps: first passes 30, 30, 34 ms (median 30), later passes 20 ms, 1 ms after the steps;
    # 50 steps: first 25 ms, later 19 ms, nothing after
    runs = {"4": [run([0.030, 0.030], [0.020] * 6, [0.001, 0.001]), run([0.034], [0.020] * 3, [0.001])],
            "50": [run([0.025], [0.019] * 49, [0.0])]}
    out = _pass_breakdown(runs)
    assert out["4"]["first"] == pytest.approx(30.0) and out["4"]["rest"] == pytest.approx(20.0)
    assert out["4"]["first_extra_passes"] == pytest.approx(0.5)
    assert out["4"]["after_steps"] == pytest.approx(1.0)
    # (25 + 49 * 19) / (30 + 3 * 20 + 1)
    assert out["ratio_50_over_4_from_passes"] == pytest.approx((25 + 49 * 19) / 91, abs=1e-3)


def test_bench_codec_variant_holds_only_while_its_runs_do():
    from types import SimpleNamespace

    from eval.bench import _variant

    studio = SimpleNamespace(video_codec=SimpleNamespace(folded_decode=True),
                             model=SimpleNamespace(traced_cache_write=True))
    with _variant(studio, "unfolded_decode") as kwargs:
        assert kwargs == {} and studio.video_codec.folded_decode is False
    assert studio.video_codec.folded_decode is True
    with pytest.raises(RuntimeError), _variant(studio, "unfolded_decode"):
        raise RuntimeError("a failed run restores the codec too")
    assert studio.video_codec.folded_decode is True
    with _variant(studio, "eager_write") as kwargs:
        assert kwargs == {} and studio.model.traced_cache_write is False and studio.video_codec.folded_decode is True
    assert studio.model.traced_cache_write is True
    with _variant(studio, "separate") as kwargs:
        assert kwargs == {"write_beside": False, "fuse_cache_write": False}
