"""The plain functions the workbench's events call: generate, compare, chunks, stream, evaluate.

Each handler validates its inputs (``app.runs``), works in a fresh per-request folder
(``app.workspace``), calls the shared runtime (``mf.pipeline.generate`` on a studio loaded once at
startup and only read afterwards) or the eval package, and returns plain values for Gradio. Nothing
here keeps state between requests: per-visitor state (the Chunks tab's generation) travels in a
``gr.State`` owned by that visitor's session.

Errors: every handler is wrapped by ``_guarded`` so a visitor sees a ``gr.Error`` sentence, never a
stack trace; unexpected exceptions are logged with their traceback and summarised in one line.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import math
import os
import time
from dataclasses import dataclass

import gradio as gr
import numpy as np

from app import limits
from app.plots import chunk_timing_figure, trajectory_figure
from app.runs import (
    InputError,
    RunStats,
    check_seconds,
    check_steps,
    check_text,
    join_chunks,
    parse_character,
    resolve_seed,
    run_generation,
)
from app.workspace import Workspace
from mf.constants import FPS, SAMPLE_RATE
from mf.media import MediaError, write_mp4
from mf.pipeline import Chunk, Studio, character_for

log = logging.getLogger("mf.app")

# Chunks are grouped into stream segments of at least this much video: each segment costs an ffprobe
# and an ffmpeg mux inside Gradio, so very short segments spend more time muxing than playing.
STREAM_SEGMENT_SECONDS = 1.0
# Per-step previews shown for one chunk (50 steps are subsampled evenly, always keeping the last).
MAX_STEP_PREVIEWS = 10
PREVIEW_SCALE = 4
# Offered when the eval package does not publish its own list.
DEFAULT_METRICS = ("sync", "pesq", "stoi", "fid", "kid")


def _guarded(fn):
    """Turn any failure into a gr.Error a person can read; log the traceback for the operator."""

    def translate(exc: BaseException) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, (InputError, MediaError)):
            return gr.Error(str(exc))
        if isinstance(exc, ValueError):  # the pipeline's own argument checks: written for people
            log.warning("%s refused: %s", fn.__name__, exc)
            return gr.Error(f"Invalid request: {exc}")
        log.exception("%s failed", fn.__name__)
        return gr.Error(f"Something went wrong while running {fn.__name__.strip('_')}: "
                        f"{type(exc).__name__}: {str(exc)[:300]}. The details were logged on the server.")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except GeneratorExit:
                raise
            except Exception as exc:  # noqa: BLE001 - translated for the visitor, logged above
                raise translate(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise translate(exc) from None
    return wrapper


def _json_safe(numbers: dict) -> dict:
    """NaN/inf (e.g. the confidence of a flagged sync estimate) become None: JSON has no NaN."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in numbers.items()}


def _request(text: str | None, seed: int, character_id: int | None) -> dict:
    """What a clip was asked for, kept in its stats so its ground truth can be drawn later (``truth_for_clip``)."""
    return {"text": text, "character": character_for(seed, character_id)}


@dataclass
class ChunkSession:
    """One visitor's Chunks-tab generation (kept in their gr.State, never shared)."""

    chunks: list
    steps: int
    seed: int
    seconds: float
    text: str | None
    character_id: int | None
    out_dir: str
    trajectories: dict  # steps -> step latents of chunk 0, same seed
    stats: RunStats


class Handlers:
    """Event handlers bound to one read-only studio and one workspace."""

    def __init__(self, studio: Studio | None, generate_fn, workspace: Workspace, *, studio_error: str | None = None,
                 score_sets=None, eval_plots=None, eval_error: str | None = None, metrics=None,
                 assets: str = "assets"):
        self.studio = studio
        self.assets = assets
        self.metrics = tuple(metrics or DEFAULT_METRICS)
        self.generate_fn = generate_fn
        self.workspace = workspace
        self.studio_error = studio_error
        self.score_sets = score_sets
        self.eval_plots = eval_plots
        self.eval_error = eval_error
        self._feature_extractor = None
        self._baseline_studio = None  # arm B's studio, loaded on first use (_baseline)

    # ---------------------------------------------------------------- shared helpers
    def metric_choices(self) -> list[str]:
        return list(self.metrics)

    def default_metrics(self) -> list[str]:
        return [m for m in self.metrics if m in ("sync", "pesq")] or list(self.metrics[:1])

    def _need_studio(self):
        if self.studio is None or self.generate_fn is None:
            raise gr.Error(f"Generation is unavailable on this server: {self.studio_error or 'no model loaded'}.")
        return self.studio

    def _inputs(self, text, character, seed, seconds, cap):
        return check_text(text), parse_character(character), resolve_seed(seed), check_seconds(seconds, cap)

    # ---------------------------------------------------------------- generate (one clip)
    @_guarded
    def generate(self, text, character, seed, seconds, steps):
        """One clip: (mp4 path, seed used, stats dict)."""
        self._need_studio()
        text, cid, seed, seconds = self._inputs(text, character, seed, seconds, limits.MAX_SECONDS_STREAM)
        steps = check_steps(steps)
        run = run_generation(self.studio, self.generate_fn, steps=steps, seed=seed, seconds=seconds, text=text,
                             character_id=cid, out_dir=self.workspace.new_dir("generate"), name="clip")
        return run.mp4_path, seed, {**run.stats.as_dict(), **_request(text, seed, cid)}

    # ---------------------------------------------------------------- compare (4 / 8 / 50)
    def _extractor(self):
        """The corpus feature extractor for the frame distance, loaded on first use and kept (read-only)."""
        if self._feature_extractor is None:
            from eval.features import load_extractor

            self._feature_extractor = load_extractor()
        return self._feature_extractor

    def _ground_truth(self, seed: int, seconds: float, text: str | None, character_id: int | None, out_dir: str):
        """(corpus clip, its mp4): what a request of these arguments should look and sound like."""
        from eval.compare import ground_truth

        truth = ground_truth(seed, seconds, text=text, character_id=character_id,
                             frames_per_chunk=self.studio.config.frames_per_chunk,
                             size=self.studio.video_codec.frame_size)
        path = write_mp4(os.path.join(out_dir, f"ground-truth-seed{seed}.mp4"), truth.frames, FPS, truth.audio,
                         SAMPLE_RATE)
        return truth, path

    def _baseline(self) -> tuple[Studio, str]:
        """(studio, label) of the naive baseline B: arm B's shipped weights (``<assets>/arms/B``, issue 13)
        sampled with 4 plain Euler steps, or, while they are not shipped, this model's own weights with
        the same naive sampler (then the panel shows what the shortcut jumps alone buy)."""
        folder = os.path.join(self.assets, "arms", "B")
        if os.path.isfile(os.path.join(folder, "config.json")):
            if self._baseline_studio is None:
                from mf.pipeline import load_studio

                self._baseline_studio = load_studio(model_dir=folder, device=self.studio.device,
                                                    codecs=(self.studio.video_codec, self.studio.audio_codec))
            return self._baseline_studio, ("**baseline B** (ablation arm B: teacher-forced flow matching, "
                                           "4 plain Euler steps, d = 0)")
        return self.studio, ("**naive 4 steps** (this model's weights, 4 plain Euler steps, d = 0: the "
                             "ablation arm B's weights are not shipped yet, so this shows what the "
                             "shortcut jumps of the 4-step panel buy at equal cost)")

    @_guarded
    def compare(self, text, character, seed, seconds, baseline=False):
        """Same seed at 4, 8 and 50 steps beside the ground truth; yields after each so players fill in turn.

        Yields (seed used, truth video, truth notes, video4, notes4, video8, notes8, video50, notes50,
        all numbers dict, baseline video, baseline notes). The ground truth is the corpus render of the
        same character and script (``eval.compare.ground_truth``); each model panel shows its sync offset,
        its distances to the truth (``eval.compare.measure``), wall time and RTF. ``baseline``: also the
        naive baseline B at 4 steps with the same seed (``_baseline``), last, under ``runs["B"]``.
        """
        from eval import compare as gt

        self._need_studio()
        text, cid, seed, seconds = self._inputs(text, character, seed, seconds, limits.MAX_SECONDS_COMPARE)
        out_dir = self.workspace.new_dir("compare")
        truth, truth_mp4 = self._ground_truth(seed, seconds, text, cid, out_dir)
        truth_sync = gt.sync_numbers(truth.frames, truth.audio)
        truth_note = (f"**ground truth** (corpus render, character {character_for(seed, cid)}, same script)\n\n"
                      + gt.markdown(truth_sync) + " (the estimator on the truth itself)")
        videos = {s: None for s in limits.COMPARE_STEPS}
        notes = {s: "waiting…" for s in limits.COMPARE_STEPS}
        table: dict = {"seed": seed, "seconds_requested": seconds, "ground_truth": _json_safe(truth_sync), "runs": {}}

        videos["B"] = None
        notes["B"] = "waiting…" if baseline else "off: tick “naive baseline B” to add it."

        def frame():
            out = [seed, truth_mp4, truth_note]
            for s in limits.COMPARE_STEPS:
                out += [videos[s], notes[s]]
            return tuple(out + [dict(table), videos["B"], notes["B"]])

        # (panel key, steps, studio, sampler mode, label above the numbers)
        panels = [(steps, steps, self.studio, None, "") for steps in limits.COMPARE_STEPS]
        if baseline:
            studio_b, label = self._baseline()
            panels.append(("B", 4, studio_b, "multi", label + "\n\n"))
        for key, steps, studio, mode, label in panels:
            notes[key] = f"⏳ generating {'the baseline ' if key == 'B' else ''}at {steps} steps…"
            yield frame()
            run = run_generation(studio, self.generate_fn, steps=steps, seed=seed, seconds=seconds, text=text,
                                 character_id=cid, out_dir=out_dir, name="compare", mode=mode)
            numbers = gt.measure(run.frames, run.audio, truth.frames, truth.audio, wall_s=run.stats.wall_s,
                                 extractor=self._extractor())
            videos[key] = run.mp4_path
            notes[key] = label + run.stats.markdown() + "\n\n" + gt.markdown(numbers, timing=False)
            table["runs"][str(key)] = {**run.stats.as_dict(), "vs_ground_truth": _json_safe(numbers),
                                       **({"sampler_mode": mode} if mode else {})}
            yield frame()

    @_guarded
    def truth_for_clip(self, video, stats):
        """The ground truth of a finished Talk clip and the clip's numbers against it: (truth mp4, notes).

        ``stats`` is the clip's timings dict as /generate and /stream return it (seed, seconds, text,
        character, wall_s); the clip is read back from its mp4 (AAC audio, so the audio distance includes
        the codec's small loss).
        """
        from eval import compare as gt
        from mf.media import read_av

        self._need_studio()
        if not video or not stats or "character" not in stats:
            raise gr.Error("Generate a clip first (▶ Stream or “Generate the whole clip first”).")
        clip = read_av(str(video))  # gr.Video hands the handler a file path
        seed, seconds = int(stats["seed"]), float(stats["seconds"])
        truth, out = self._ground_truth(seed, seconds, stats.get("text"), int(stats["character"]),
                                        self.workspace.new_dir("truth"))
        numbers = gt.measure(clip.frames, clip.audio, truth.frames, truth.audio, wall_s=stats.get("wall_s"),
                             extractor=self._extractor())
        return out, f"**this clip vs its ground truth** (character {stats['character']}, same script)\n\n" + \
            gt.markdown(numbers)

    # ---------------------------------------------------------------- chunks
    @_guarded
    def chunks(self, text, character, seed, seconds, steps):
        """Generate once keeping per-step latents; returns the session and the view of chunk 0."""
        self._need_studio()
        text, cid, seed, seconds = self._inputs(text, character, seed, seconds, limits.MAX_SECONDS_CHUNKS)
        steps = check_steps(steps)
        out_dir = self.workspace.new_dir("chunks")
        run = run_generation(self.studio, self.generate_fn, steps=steps, seed=seed, seconds=seconds, text=text,
                             character_id=cid, out_dir=out_dir, name="chunks", keep_step_latents=True)
        if not run.chunks[0].step_latents:
            raise gr.Error("The pipeline returned no step latents although keep_step_latents=True was asked for.")
        trajectories = {steps: run.chunks[0].step_latents}
        first_seconds = np.asarray(run.chunks[0].frames).shape[0] / FPS
        # The same seed and chunk at the other step counts, for the 4-vs-50 trajectory plot.
        for other in (4, 50):
            if other != steps:
                extra = run_generation(self.studio, self.generate_fn, steps=other, seed=seed, seconds=first_seconds,
                                       text=text, character_id=cid, out_dir=None, keep_step_latents=True)
                trajectories[other] = extra.chunks[0].step_latents
        session = ChunkSession(run.chunks, steps, seed, seconds, text, cid, out_dir, trajectories, run.stats)
        return self._session_outputs(session, run.mp4_path)

    def _session_outputs(self, session: ChunkSession, full_mp4: str, kept: str = ""):
        n = len(session.chunks)
        slider = gr.Slider(minimum=0, maximum=max(n - 1, 1), value=0, step=1, interactive=n > 1,
                           label=f"Chunk (0 … {n - 1})")
        summary = (f"{n} chunks of {np.asarray(session.chunks[0].frames).shape[0]} frames · "
                   f"{session.steps} steps · seed {session.seed}{kept}\n\n{session.stats.markdown()}")
        traj = trajectory_figure(session.trajectories, chunk_index=0)
        return (session, slider, full_mp4, summary, traj, session.stats.as_dict()) + self._chunk_view(session, 0)

    @_guarded
    def chunk_view(self, session, index):
        """The selected chunk's clip, audio, per-step previews, timings and the per-chunk bar chart."""
        if session is None:
            raise gr.Error("Generate first: press “Generate chunks”.")
        return self._chunk_view(session, index)

    def _chunk_view(self, session: ChunkSession, index):
        n = len(session.chunks)
        k = int(min(max(int(index or 0), 0), n - 1))
        chunk = session.chunks[k]
        frames = np.asarray(chunk.frames)
        audio = np.asarray(chunk.audio, dtype=np.float32).reshape(-1)
        clip = os.path.join(session.out_dir, f"chunk{k:03d}-seed{session.seed}.mp4")
        if not os.path.exists(clip):
            write_mp4(clip, frames, FPS, audio, SAMPLE_RATE)
        t0 = chunk.start_seconds
        t1, timings = t0 + frames.shape[0] / FPS, chunk.timings
        info = (f"**Chunk {k} of {n - 1}** · frames {frames.shape[0]} ({t0:.2f}–{t1:.2f} s) · "
                f"model {timings['model_s'] * 1000:.0f} ms · decode {timings['decode_s'] * 1000:.0f} ms · "
                f"{timings['nfe']} network evaluations · seed {chunk.seed}")
        return clip, (SAMPLE_RATE, audio), self._step_previews(session, chunk), info, \
            chunk_timing_figure(session.chunks, selected=chunk.index)

    def _step_previews(self, session: ChunkSession, chunk: Chunk):
        """Middle frame of the decoded video latent after a few denoising steps (``Chunk.step_latents``)."""
        steps = chunk.step_latents or []
        n = len(steps)
        picks = sorted(set(np.linspace(0, n - 1, min(n, MAX_STEP_PREVIEWS)).round().astype(int).tolist())) if n else []
        gallery = []
        for i in picks:
            video, _audio = steps[i]
            frames = np.asarray(self.studio.video_codec.decode_uint8(video))
            mid = frames[frames.shape[0] // 2]
            big = np.repeat(np.repeat(mid, PREVIEW_SCALE, axis=0), PREVIEW_SCALE, axis=1)
            gallery.append((big, f"after step {i + 1}/{n}"))
        return gallery

    @_guarded
    def continue_from(self, session, index, new_seed):
        """Keep chunks 0..k, regenerate everything after them with a new seed."""
        self._need_studio()
        if session is None:
            raise gr.Error("Generate first: press “Generate chunks”.")
        k = int(index or 0)
        history = session.chunks[:k + 1]
        if len(history) >= len(session.chunks):
            raise gr.Error(f"Chunk {k} is the last one; pick an earlier chunk to continue from.")
        seed = resolve_seed(new_seed)
        out_dir = self.workspace.new_dir("continue")
        # The same clip length and character; only the noise (and a seed-made babble script) change.
        run = run_generation(self.studio, self.generate_fn, steps=session.steps, seed=seed, seconds=session.seconds,
                             text=session.text, character_id=character_for(session.seed, session.character_id),
                             out_dir=out_dir, name=f"continue-from{k}", keep_step_latents=True, history=history)
        new = ChunkSession(run.chunks, session.steps, seed, session.seconds, session.text, session.character_id,
                           out_dir, session.trajectories, run.stats)
        return self._session_outputs(new, run.mp4_path,
                                     kept=f" (chunks 0–{k} kept from seed {session.seed}, the rest new)")

    # ---------------------------------------------------------------- stream
    @_guarded
    def stream(self, text, character, seed, seconds, steps, live: bool = True):
        """Yields (segment mp4 or growing mp4, status markdown, full mp4 at the end, seed used, stats at the end)."""
        self._need_studio()
        text, cid, seed, seconds = self._inputs(text, character, seed, seconds, limits.MAX_SECONDS_STREAM)
        steps = check_steps(steps)
        out_dir = self.workspace.new_dir("stream")
        expected = math.ceil(round(seconds * FPS) / self.studio.config.frames_per_chunk)
        pending, done, frames_done, seg = [], [], 0, 0
        start = time.perf_counter()
        yield None, f"⏳ starting · seed {seed}", None, seed, gr.skip()
        gen = self.generate_fn(self.studio, steps=steps, seed=seed, seconds=seconds, text=text, character_id=cid,
                               cfg_scale=1.0, keep_step_latents=False)
        for chunk in gen:
            pending.append(chunk)
            done.append(chunk)
            frames_done += np.asarray(chunk.frames).shape[0]
            pending_frames = sum(np.asarray(c.frames).shape[0] for c in pending)
            if pending_frames < STREAM_SEGMENT_SECONDS * FPS and len(done) < expected:
                continue
            elapsed = time.perf_counter() - start
            status = (f"▶ chunk {len(done)}/{expected} · {frames_done / elapsed:.1f} frames/s generated "
                      f"(real time is {FPS}) · {elapsed:.1f} s elapsed · seed {seed}")
            if live:
                frames, audio = join_chunks(pending)
                path = write_mp4(os.path.join(out_dir, f"segment{seg:03d}.mp4"), frames, FPS, audio, SAMPLE_RATE)
            else:  # no ffmpeg for Gradio's streaming player: show the clip so far instead
                frames, audio = join_chunks(done)
                path = write_mp4(os.path.join(out_dir, f"sofar{seg:03d}.mp4"), frames, FPS, audio, SAMPLE_RATE)
            seg += 1
            pending = []
            yield path, status, None, seed, gr.skip()
        elapsed = time.perf_counter() - start
        frames, audio = join_chunks(done)
        stats = RunStats(
            steps=steps, seed=seed, seconds=frames.shape[0] / FPS, chunks=len(done), frames=frames.shape[0],
            wall_s=elapsed,  # includes muxing the segments: what a viewer of the stream waited
            model_s=float(sum(c.timings["model_s"] for c in done)),
            decode_s=float(sum(c.timings["decode_s"] for c in done)),
            nfe=int(sum(c.timings["nfe"] for c in done)), trained=self.studio.trained)
        t0 = time.perf_counter()
        full = write_mp4(os.path.join(out_dir, f"stream-{steps}steps-seed{seed}.mp4"), frames, FPS, audio, SAMPLE_RATE)
        stats.mux_s = time.perf_counter() - t0
        final = (f"✅ done: {len(done)} chunks, {stats.seconds:.2f} s of video in {elapsed:.2f} s "
                 f"({stats.gen_fps:.1f} frames/s, RTF {stats.rtf:.2f}) · seed {seed}")
        yield gr.skip(), final, full, seed, {**stats.as_dict(), **_request(text, seed, cid)}

    # ---------------------------------------------------------------- evaluate
    @_guarded
    def evaluate(self, generated_files, reference_files=None, metrics=None, windows="0-5,5-15,15-25",
                 progress=gr.Progress()):
        """Score uploaded sets: (summary md, table, 3 figures, [csv, json], notes md); references optional for sync."""
        from app.evaluate import run_evaluation  # local: keeps the eval package optional at startup

        if self.score_sets is None:
            raise gr.Error(f"Evaluation is unavailable on this server: {self.eval_error or 'eval package missing'}.")
        return run_evaluation(self.score_sets, self.eval_plots, generated_files, reference_files, metrics,
                              windows, self.workspace.new_dir("evaluate"), progress)

    def example_set(self) -> tuple[list[str], list[str]]:
        """The shipped example set: (generated, references) in ``assets/examples`` (``python -m eval.examples``)."""
        from eval.examples import example_files

        return example_files(os.path.join(self.assets, "examples"))

    def ablation(self):
        """(plotly figure or None, markdown) of the shipped factor ablation (``<assets>/arms/ablation.json``,
        written by ``python -m eval.ablation --json``): corpus-FD per time window, one line per arm."""
        path = os.path.join(self.assets, "arms", "ablation.json")
        try:
            from eval.ablation_report import figure

            with open(path, encoding="utf-8") as f:
                result = json.load(f)
            fig = figure(result)
        except (ImportError, OSError):  # no eval package, or no shipped ablation in this build
            return None, ("The factor ablation (arms A-F, issue 13) is not shipped with this build: make it with "
                          "`python -m mf.train arm --arm all ...` then `python -m eval.ablation --json "
                          "assets/arms/ablation.json` (model card, \"Ablation as a factor table\").")
        return fig, (f"**Factor ablation** (arms A-F, model card \"Ablation as a factor table\"): corpus-FD per time "
                     f"window of {result.get('long_seconds', 25):g} s clips, mean and 95% bootstrap interval over "
                     f"{len([s for part in result.get('seeds', []) for s in part])} held-out seeds; lower is "
                     f"closer to the corpus. Made by `{result.get('command', 'python -m eval.ablation')}`.")

    @_guarded
    def evaluate_examples(self, metrics, windows="0-5,5-15,15-25", progress=gr.Progress()):
        """Score the shipped example set through the same handler as uploads."""
        generated, references = self.example_set()
        if not generated:
            raise gr.Error("This build ships no example set (assets/examples); make it with "
                           "`python -m eval.examples --out assets/examples`.")
        return self.evaluate(generated, references, metrics, windows, progress)
