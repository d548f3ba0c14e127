"""Specification of the ablation (issue 13): the arms as data, their training command, and eval.ablation.

- neighbouring arms differ in exactly the documented factor (table column and config fields), and every
  trained arm shares the stage-3 settings; B is A's weights sampled 4 naive Euler steps (d = 0);
- `python -m mf.train arm --arm all` trains every arm from one init with equal steps and batch and ships
  each as float16 safetensors + config + arm.json;
- eval.ablation: JSON shape, bootstrap intervals (contain the mean, shrink with N), missing arms are
  reported, and the markdown table is generated from the JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest
import torch

torch.set_num_threads(1)

from mf.sampler import make_schedule
from mf.train.arms import ARMS, FACTORS, ORDER, changed_columns, get_arm

# config fields each neighbour pair changes (everything else, e.g. max_history / rollout steps / cfg, is shared)
CONFIG_FIELDS = {("A", "B"): set(), ("B", "C"): {"w_shortcut"}, ("C", "D"): {"history"},
                 ("D", "E"): {"w_fm", "w_shortcut", "w_dmd", "teacher"},
                 ("E", "F"): {"w_fm", "w_shortcut", "w_dmd", "teacher"}}


def _config_diff(a, b) -> set[str]:
    da, db = asdict(a.config()), asdict(b.config())
    return {k for k in da if da[k] != db[k]}


def test_each_arm_differs_from_its_neighbour_in_exactly_the_documented_factor():
    assert ORDER == ("A", "B", "C", "D", "E", "F")
    for left, right in zip(ORDER, ORDER[1:]):
        a, b = ARMS[left], ARMS[right]
        assert changed_columns(a, b) == {FACTORS[(left, right)]}, (left, right)
        assert _config_diff(a, b) == CONFIG_FIELDS[(left, right)], (left, right)


def test_arm_configs_match_the_issue_table():
    a, c, d, e, f = (ARMS[k].config() for k in "ACDEF")
    assert a.history == c.history == "real" and d.history == e.history == f.history == "generated"
    assert (a.w_fm, a.w_shortcut, a.w_dmd) == (1.0, 0.0, 0.0)
    assert c.w_shortcut > 0 and c.w_dmd == 0 and d.w_dmd == 0
    assert (e.w_fm, e.w_shortcut, e.teacher) == (0.0, 0.0, "frozen") and e.w_dmd > 0
    assert min(f.w_fm, f.w_shortcut, f.w_dmd) > 0 and f.teacher == "online"
    assert [s for s, _ in ARMS["F"].sampling] == [4, 8, 50] and ARMS["A"].sampling == ((50, "multi"),)
    assert ARMS["B"].weights_of == "A" and all(ARMS[k].trained for k in "ACDEF")
    # B is naive: 4 Euler steps, the network told d = 0; C..F at 4 tell the network the jump
    assert set(make_schedule(4, mode=ARMS["B"].sampling[0][1]).model_d) == {0.0}
    assert all(x > 0 for x in make_schedule(4, mode=ARMS["C"].sampling[0][1]).model_d)
    # run-wide settings are applied to every arm alike
    assert {ARMS[k].config(max_history=3).max_history for k in ORDER} == {3}
    with pytest.raises(ValueError, match="unknown arm"):
        get_arm("G")


def test_the_sampler_tells_the_jump_only_to_arms_whose_objective_trains_a_few_step_mode():
    for arm in ARMS.values():
        for steps, mode in arm.sampling:
            assert mode == ("multi" if steps > 16 or arm.objective == "fm" else "few"), (arm.name, steps)


# ----------------------------------------------------------------------------- eval.ablation

def test_bootstrap_interval_contains_the_mean_and_shrinks_with_n():
    from eval.ablation_report import bootstrap

    rng = np.random.default_rng(0)
    small, large = bootstrap(rng.normal(5, 2, 10), seed=1), bootstrap(rng.normal(5, 2, 400), seed=1)
    for b in (small, large):
        assert b["lo"] <= b["mean"] <= b["hi"] and b["lo"] < b["hi"]
    assert (large["hi"] - large["lo"]) < 0.5 * (small["hi"] - small["lo"])
    assert large["n"] == 400 and abs(large["point"] - 5) < 0.5
    assert bootstrap([1.0, 2.0, 3.0], seed=3) == bootstrap([1.0, 2.0, 3.0], seed=3)  # deterministic


def _fake_clip(rng, n_frames, shift, windows):
    from eval.windows import window_name

    return {"windows": {window_name(w): {"features": rng.normal(shift, 1, (n_frames, 4)), "identity": 1.0 + shift,
                                         "sync_ms": 40.0 * shift, "audio": rng.normal(shift, 1, (n_frames, 3))}
                        for w in windows}, "model_s": 0.1}


def test_set_metrics_separate_a_shifted_system_and_intervals_shrink_with_clips():
    from eval.ablation_report import system_metrics

    rng = np.random.default_rng(0)
    w = ((0.0, 5.0),)
    ref = [_fake_clip(rng, 20, 0.0, w) for _ in range(40)]
    good = system_metrics([_fake_clip(rng, 20, 0.0, w) for _ in range(40)], ref, w, n_boot=40)["0-5"]
    bad = system_metrics([_fake_clip(rng, 20, 1.5, w) for _ in range(40)], ref, w, n_boot=40)["0-5"]
    few = system_metrics([_fake_clip(rng, 20, 1.5, w) for _ in range(4)], ref[:4], w, n_boot=40)["0-5"]
    for metric in ("corpus_fd", "audio_fd"):
        assert good[metric]["hi"] < bad[metric]["lo"], metric
        assert bad[metric]["lo"] <= bad[metric]["mean"] <= bad[metric]["hi"]
        assert bad[metric]["hi"] - bad[metric]["lo"] < few[metric]["hi"] - few[metric]["lo"], metric
    assert good["sync_within_40ms"]["mean"] == 1.0 and bad["sync_abs_ms"]["mean"] == 60.0


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    from eval.ablation import main
    from mf.codecs import AudioCodec, VideoCodec
    from mf.model import MFTransformer
    from mf.train.arms import export_arm

    tmp = tmp_path_factory.mktemp("ablation")
    torch.manual_seed(0)
    micro = MFTransformer.from_preset("micro", video_channels=8, latent_size=8, n_mels=80)
    export_arm(micro, tmp / "arms" / "F", ARMS["F"], {"steps": 0})
    codecs = (VideoCodec.from_preset("micro"), AudioCodec.from_preset("micro"))

    def extractor(frames):  # a tiny deterministic frame feature: channel means of a 2x2 grid
        f = np.asarray(frames, np.float64)
        h, w = f.shape[1] // 2, f.shape[2] // 2
        return np.concatenate([f[:, i * h:(i + 1) * h, j * w:(j + 1) * w].mean(axis=(1, 2))
                               for i in range(2) for j in range(2)], axis=1)

    out = tmp / "out"
    rc = main(["--arms-dir", str(tmp / "arms"), "--arms", "C,F", "--steps", "4", "--clips-per-set", "2",
               "--long-seconds", "6", "--n-boot", "20", "--json", str(out) + ".json", "--markdown", str(out) + ".md",
               "--html", str(out) + ".html"], codec_objects=codecs, extractor=extractor)
    assert rc == 0
    return json.loads((tmp / "out.json").read_text()), tmp


@pytest.mark.slow  # ~5 min on 2 shared cores: generation + the sync estimator on every clip
def test_ablation_json_has_the_documented_shape_and_reports_missing_arms(ablation_run):
    result, tmp = ablation_run
    assert [m["arm"] for m in result["missing"]] == ["C"] and "mf.train arm --arm C" in result["missing"][0]["reason"]
    assert [(s["arm"], s["steps"]) for s in result["systems"]] == [("real", None), ("F", 4)]
    assert len(result["seeds"]) == 3 and len({s for part in result["seeds"] for s in part}) == 6
    assert min(min(p) for p in result["seeds"]) >= 10**6 or min(min(p) for p in result["seeds"]) >= 0
    assert result["windows"] == ["0-5"] and result["command"].startswith("python -m eval.ablation")
    f = result["systems"][1]
    for part in (f["short"], f["windows"]["0-5"]):
        for key in ("corpus_fd", "kid", "sync_abs_ms", "sync_within_40ms", "audio_fd", "model_s_per_chunk"):
            assert set(part[key]) >= {"mean", "lo", "hi"}, key
        assert part["corpus_fd"]["lo"] <= part["corpus_fd"]["mean"] <= part["corpus_fd"]["hi"]
    assert f["short"]["model_s_per_chunk"]["mean"] > 0
    assert (tmp / "out.html").stat().st_size > 1000


@pytest.mark.slow
def test_markdown_table_is_generated_from_the_json_written_by_the_run(ablation_run):
    from eval.ablation_report import markdown_table

    result, tmp = ablation_run
    text = markdown_table(result)
    assert text == (tmp / "out.md").read_text().rstrip("\n")
    fd = result["systems"][1]["windows"]["0-5"]["corpus_fd"]
    assert f"| F | 4 | {fd['mean']:.2f} [{fd['lo']:.2f}, {fd['hi']:.2f}]" in text
    assert "Missing arms" in text and "C:" in text


def test_missing_arms_are_named_with_the_command_that_makes_them(tmp_path):
    from eval.ablation import find_arms
    from mf.model import MFTransformer
    from mf.train.arms import export_arm

    export_arm(MFTransformer.from_preset("micro"), tmp_path / "B", ARMS["B"], {"steps": 3})
    (tmp_path / "E").mkdir()
    present, missing = find_arms(tmp_path, ["B", "e", "F"])
    assert [(a.name, f.name) for a, f in present] == [("B", "B")]
    assert [m["arm"] for m in missing] == ["E", "F"]
    assert all("python -m mf.train arm --arm" in m["reason"] and str(tmp_path) not in m["reason"] for m in missing)
    meta = json.loads((tmp_path / "B" / "arm.json").read_text())
    assert meta["weights_of"] == "A" and meta["sampling"] == [[4, "multi"]] and meta["training"] == {"steps": 3}
    from safetensors.torch import load_file
    assert {t.dtype for t in load_file(str(tmp_path / "B" / "diffusion_pytorch_model.safetensors")).values()} == {
        torch.float16}


def test_markdown_table_is_generated_from_the_json():
    from eval.ablation_report import figure, markdown_table, system_metrics

    rng = np.random.default_rng(1)
    short, win = ((0.0, 2.0),), ((0.0, 5.0), (5.0, 15.0))
    ref_s = [_fake_clip(rng, 10, 0.0, short) for _ in range(6)]
    ref_w = [_fake_clip(rng, 10, 0.0, win) for _ in range(6)]
    systems = []
    for arm, shift in (("real", 0.0), ("F", 0.5)):
        s = system_metrics([_fake_clip(rng, 10, shift, short) for _ in range(6)], ref_s, short, n_boot=10)["0-2"]
        w = system_metrics([_fake_clip(rng, 10, shift, win) for _ in range(6)], ref_w, win, n_boot=10)
        systems.append({"arm": arm, "steps": 4 if arm == "F" else None, "short": s, "windows": w})
    result = {"systems": systems, "seeds": [[10, 11], [12, 13], [14, 15]], "floor_seeds": [16, 21],
              "missing": [{"arm": "C", "reason": "no weights"}], "windows": ["0-5", "5-15"], "command": "python -m x"}
    text = markdown_table(json.loads(json.dumps(result)))
    fd = systems[1]["windows"]["5-15"]["corpus_fd"]
    assert f"| F | 4 | {fd['mean']:.2f} [{fd['lo']:.2f}, {fd['hi']:.2f}]" in text
    assert text.count("| real | - |") == 3 and "**25 s clips, 5-15 s**" in text and "C: no weights" in text
    fig = figure(result)
    assert [t.name for t in fig.data] == ["real", "F@4"] and list(fig.data[1].y) == [
        systems[1]["windows"][k]["corpus_fd"]["mean"] for k in ("0-5", "5-15")]


def test_one_command_trains_every_arm_from_one_init_with_equal_steps_and_batch(tmp_path):
    from mf.model import MFTransformer
    from mf.train import stages

    MFTransformer.from_preset("micro").save_pretrained(str(tmp_path / "init"))
    assert stages.main(["arm", "--arm", "all", "--preset", "micro", "--synthetic", "--runs", str(tmp_path / "runs"),
                        "--init", str(tmp_path / "init"), "--arms-dir", str(tmp_path / "arms"), "--steps", "1",
                        "--max-history", "2", "--log-every", "100"]) == 0
    metas = {k: json.loads((tmp_path / "arms" / k / "arm.json").read_text()) for k in ORDER}
    trained = [metas[k]["training"] for k in "ACDEF"]
    assert {(t["steps"], t["batch_size"], t["n_chunks"], t["init"]) for t in trained} == {
        (1, trained[0]["batch_size"], 3, str(tmp_path / "init"))}
    assert [t["arm"] for t in trained] == list("ACDEF")
    assert {k: metas[k]["training"]["mf_config"]["history"] for k in "ACDEF"} == {
        "A": "real", "C": "real", "D": "generated", "E": "generated", "F": "generated"}
    a = (tmp_path / "arms" / "A" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert (tmp_path / "arms" / "B" / "diffusion_pytorch_model.safetensors").read_bytes() == a
    assert metas["B"]["weights_of"] == "A"
    # equal optimizer steps, never wall time
    assert stages.main(["arm", "--arm", "C", "--preset", "micro", "--synthetic", "--init", str(tmp_path / "init"),
                        "--minutes", "1", "--steps", "1", "--runs", str(tmp_path / "r2")]) == 2


def test_ablation_numbers_do_not_depend_on_the_worker_count(tmp_path, monkeypatch):
    """--workers 2 (spawned processes, shipped codecs and extractor) gives the same table as --workers 1, and a
    run read back from its --cache gives that table again without generating anything."""
    import eval.ablation
    from eval.ablation import main
    from mf.model import MFTransformer
    from mf.train.arms import export_arm

    torch.manual_seed(0)
    micro = MFTransformer.from_preset("micro", video_channels=8, latent_size=8, n_mels=80)
    export_arm(micro, tmp_path / "arms" / "F", ARMS["F"], {"steps": 0})
    results = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.json"
        rc = main(["--arms-dir", str(tmp_path / "arms"), "--arms", "F", "--steps", "4", "--clips-per-set", "2",
                   "--short-seconds", "1", "--long-seconds", "0", "--n-boot", "20", "--workers", str(workers),
                   "--skip", "f@50", "--json", str(out)]
                  + (["--cache", str(tmp_path / "cache")] if workers == 2 else []))
        assert rc == 0
        results[workers] = json.loads(out.read_text())
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").iterdir()) == ["F", "floor", "real"]  # no .tmp

    def no_generation(job, ctx=None):
        raise AssertionError(f"job {job['key']} ran although it is in the cache")

    monkeypatch.setattr(eval.ablation, "_run_job", no_generation)
    again = tmp_path / "again.json"
    assert main(["--arms-dir", str(tmp_path / "arms"), "--arms", "F", "--steps", "4", "--clips-per-set", "2",
                 "--short-seconds", "1", "--long-seconds", "0", "--n-boot", "20", "--skip", "f@50",
                 "--cache", str(tmp_path / "cache"), "--json", str(again)]) == 0
    cached = json.loads(again.read_text())
    assert [s["short"] for s in cached["systems"]] == [s["short"] for s in results[2]["systems"]]
    one, two = results[1], results[2]
    assert [s["arm"] for s in one["systems"]] == [s["arm"] for s in two["systems"]] == ["real", "F"]
    assert two["workers"] == 2 and one["workers"] == 1 and one["skipped"] == ["F@50"]
    for a, b in zip(one["systems"], two["systems"]):
        for metric, value in a["short"].items():
            if metric not in ("model_s_per_chunk", "by_set"):
                assert value == b["short"][metric], (a["arm"], metric)
        def strip(by_set):
            return [{w: {k: v for k, v in m.items() if k != "model_s_per_chunk"} for w, m in part.items()}
                    for part in by_set]

        assert strip(a["short"]["by_set"]) == strip(b["short"]["by_set"]), a["arm"]


def test_about_tab_plots_the_shipped_ablation_json_and_says_when_it_is_absent(tmp_path):
    from app.handlers import Handlers

    handlers = Handlers(None, None, None, assets=str(tmp_path))
    fig, text = handlers.ablation()
    assert fig is None and "not shipped" in text and "python -m eval.ablation" in text
    cell = {"mean": 10.0, "lo": 8.0, "hi": 12.0}
    result = {"systems": [{"arm": a, "steps": st, "windows": {"0-5": {"corpus_fd": cell}, "5-15": {"corpus_fd": cell}}}
                          for a, st in (("real", None), ("B", 4), ("F", 4))],
              "windows": ["0-5", "5-15"], "seeds": [[1, 2], [3, 4], [5, 6]], "long_seconds": 15,
              "command": "python -m eval.ablation --quick"}
    (tmp_path / "arms").mkdir()
    (tmp_path / "arms" / "ablation.json").write_text(json.dumps(result))
    fig, text = handlers.ablation()
    assert [t.name for t in fig.data] == ["real", "B@4", "F@4"] and list(fig.data[1].x) == ["0-5 s", "5-15 s"]
    assert "6 held-out seeds" in text and "--quick" in text and "15 s clips" in text


def test_floor_checks_read_the_issue_floors_from_the_json():
    from eval.ablation_report import floor_checks, markdown_table

    def sys_(arm, steps, fds):
        return {"arm": arm, "steps": steps, "short": {}, "windows": {
            w: {"corpus_fd": {"mean": m, "lo": m - h, "hi": m + h}} for w, (m, h) in fds.items()}}

    wins = ("0-5", "5-15", "15-25")
    result = {"windows": list(wins), "seeds": [[1, 2], [3, 4], [5, 6]], "floor_seeds": [7, 12], "command": "x",
              "systems": [sys_("F", 4, {w: (10.0, 1.0) for w in wins}),
                          sys_("B", 4, {"0-5": (20.0, 1.0), "5-15": (13.0, 1.0), "15-25": (20.0, 9.5)}),
                          sys_("C", 4, {w: (13.0, 1.0) for w in wins}),
                          sys_("E", 4, {w: (10.5, 1.0) for w in wins}),
                          sys_("A", 50, {"0-5": (9.5, 1.0), "5-15": (8.0, 1.0), "15-25": (9.0, 2.0)})]}
    rows = {(r["floor"].split()[2], r["window"]): r for r in floor_checks(result)}
    assert rows[("B@4", "0-5")]["status"] == "PASS"
    assert rows[("B@4", "5-15")]["status"] == "FAIL"  # ratio 0.77: under 30% better
    assert rows[("B@4", "15-25")]["status"] == "FAIL" and "overlap" in rows[("B@4", "15-25")]["detail"]
    assert rows[("C@4", "15-25")]["status"] == "PASS" and "apart" in rows[("C@4", "15-25")]["detail"]
    assert rows[("E@4", "15-25")]["status"] == "PASS" and "OVERLAP" in rows[("E@4", "15-25")]["detail"]
    assert [rows[("worse", w)]["status"] for w in wins] == ["PASS", "FAIL", "PASS"]  # 5-15: 10 > 8 + 1
    assert "Issue-13 floors" in markdown_table(result)
    result["windows"] = ["0-5"]  # a --quick-like run without the last window says so
    rows = {(r["floor"].split()[2], r["window"]): r for r in floor_checks(result)}
    assert rows[("C@4", "15-25")]["status"] == "not measured"


def test_a_cached_job_is_found_only_with_the_same_job_weights_codecs_and_extractor(tmp_path):
    from eval.ablation import AblationError, ClipCache

    def folder(name, payload):
        (tmp_path / name).mkdir()
        (tmp_path / name / "w.bin").write_bytes(payload)
        return str(tmp_path / name)

    codecs, extractor, arm = folder("codecs", b"c"), folder("extractor", b"e"), folder("arm", b"w1")
    cache = ClipCache(tmp_path / "cache", codecs, extractor)
    job = {"key": ("F", 4, "short"), "kind": "gen", "folder": arm, "steps": 4, "mode": "few", "seeds": [1, 2],
           "seconds": 2.0, "windows": ((0.0, 2.0),), "text": None}
    clips = [{"windows": {"0-2s": {"features": np.arange(6.0).reshape(3, 2)}}, "model_s": 0.1}]
    cache.save(job, clips)
    got = cache.load(job)
    assert np.array_equal(got[0]["windows"]["0-2s"]["features"], clips[0]["windows"]["0-2s"]["features"])
    assert cache.load(dict(job, seeds=[1, 3])) is None and cache.load(dict(job, steps=8)) is None
    (tmp_path / "arm" / "w.bin").write_bytes(b"w2")                       # the arm was retrained
    assert ClipCache(tmp_path / "cache", codecs, extractor).load(job) is None
    (tmp_path / "arm" / "w.bin").write_bytes(b"w1")
    assert ClipCache(tmp_path / "cache", codecs, extractor).load(job) is not None
    (tmp_path / "extractor" / "w.bin").write_bytes(b"e2")                 # another feature extractor
    assert ClipCache(tmp_path / "cache", codecs, extractor).load(job) is None
    with pytest.raises(AblationError, match="--cache needs"):
        ClipCache(tmp_path / "cache", None, extractor)                     # codec objects: nothing to hash
