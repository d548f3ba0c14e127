"""The Gradio Blocks layout of the Mutual Forcing studio: tabs, controls and event wiring only.

All work happens in ``app.handlers`` (plain functions); this module decides what a visitor sees and
which handler each button calls, with an ``api_name`` on every event so ``gradio_client`` can drive
``generate``, ``compare``, ``chunks``, ``stream``, ``talk_truth``, ``evaluate`` and ``evaluate_examples``
(every output has a label, so the API view names it). Generation events share one
concurrency group sized for the CPU (``app.limits``); evaluation has its own.

Theme and CSS are handed to ``launch()`` (Gradio 6), see ``THEME``/``CSS`` and ``app.py``.
"""

from __future__ import annotations

import logging
import os
import shutil

import gradio as gr
import numpy as np

from app import limits
from app.handlers import Handlers
from mf.media import MEDIA_EXTS

log = logging.getLogger("mf.app")

N_GALLERY_CHARACTERS = 12
PLAYER_HEIGHT = 300
# Frames are 64x64: scale them up without blur so a face reads as a face.
CSS = """
video, .pixelated img, .thumbs img { image-rendering: pixelated; }
#notice { border-left: 4px solid #e4572e; padding: 4px 12px; background: #fff4ef; }
#notice p { color: #222; }
"""
COMPARE_NUMBERS = """The **ground truth** is the procedural corpus's render of the same character saying the same
timed script the model was conditioned on. Under each model player: **sync** = audio-video offset measured by
the weight-free estimator (*uncertain* when it flags the clip, always for clips under 2 s); **feature distance**
= mean distance between corpus features (look + mouth shape) of aligned frames; **PSNR** against the truth's
pixels (punishes any head sway, so read it with care); **log-mel distance** = dB difference of the two
spectrograms. Lower distances are closer to the truth. Definitions: `eval/compare.py`."""
EXAMPLE_SET_NOTE = ("No clips at hand? **Score the example set**: 4 clips of 6 s that the shipped model made "
                    "at 4 steps (held-out seeds) and their ground truths, the corpus renders of the same "
                    "characters and scripts (`assets/examples`, made by `python -m eval.examples`).")
THEME = gr.themes.Soft(primary_hue="orange", secondary_hue="slate")

CITATION = """```bibtex
@article{mutualforcing2026,
  title   = {Mutual Forcing: Dual-Mode Self-Evolution for Fast Autoregressive Audio-Video Character Generation},
  journal = {arXiv preprint arXiv:2604.25819},
  year    = {2026},
  url     = {https://arxiv.org/abs/2604.25819}
}
```
This repository is an independent, miniature re-implementation; it is not the authors' code or model."""

METHOD = """**Mutual Forcing** generates a talking character's video and voice together, chunk by chunk, so it
can stream. Two towers (video, audio) meet in joint self-attention on one time axis; each chunk attends
only to the past (a KV cache). One set of weights runs in two modes: a **multi-step** mode (ordinary flow
matching, ~50 small steps) and a **few-step** mode (conditioned on a step size, it jumps with 4 or 8
steps). During training the few-step mode rolls out the history exactly as at inference, the multi-step
mode learns from the real next chunk given that history, and then teaches the few-step mode (ShortCut +
DMD losses). No separate bidirectional teacher is needed.

**This Space** runs a miniature model trained on a procedural corpus of talking characters (64×64 px,
16 kHz), small enough to train and run on a CPU. Compare its 4, 8 and 50 step outputs, step through its
chunks, stream it, or score your own generated clips in *Evaluate*."""


def _gallery_characters():
    """Thumbnails and captions of the first corpus characters, or ([], reason) if mf.data is absent."""
    try:
        from mf.constants import HELDOUT_SEED_START
        from mf.data import character, render_frames
    except Exception as exc:  # noqa: BLE001 - shown as a note; generation with "random" still works
        return [], [], f"character gallery unavailable ({type(exc).__name__}: {exc})"
    items, choices = [], []
    try:
        for cid in range(N_GALLERY_CHARACTERS):
            desc = character(cid).describe()
            frames, _ = render_frames(HELDOUT_SEED_START + cid, 0.4, character_id=cid)   # no voice: start-up time
            frame = np.asarray(frames[len(frames) // 2])
            items.append((np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1), f"#{cid} {desc}"))
            choices.append((f"#{cid} · {desc}", str(cid)))
    except Exception as exc:  # noqa: BLE001
        log.exception("rendering the character gallery failed")
        return [], [], f"character gallery unavailable ({type(exc).__name__}: {exc})"
    return items, choices, None


def _notice(studio, studio_error) -> str:
    if studio is None:
        return f"⚠ **Generation is unavailable on this server**: {studio_error}. The Evaluate tab still works."
    if not studio.trained:
        return ("⚠ **These are the model's initial (untrained) weights**: `assets/model` is absent, so what "
                "you see and hear is not a trained result (blank or noise-like). The timings are still real.")
    return ""


def _fid_note() -> str:
    try:
        from eval.frechet import find_inception_weights, missing_weights_message
    except Exception:  # noqa: BLE001
        return ""
    try:
        if find_inception_weights() is None:
            return ("ℹ " + missing_weights_message() + " With fid/kid selected, the report gives corpus-FD/KID "
                    "from the project's offline feature extractor instead: useful to compare runs of this model, "
                    "not comparable to published FID.")
    except Exception as exc:  # noqa: BLE001
        return f"ℹ FID weights check failed: {exc}"
    return "✓ Standard Inception weights found: FID/KID are comparable to published numbers (mind N)."


def _controls(cap: float, *, prefix: str, choices, default_seconds: float, steps: bool):
    with gr.Row():
        text = gr.Textbox("", label="Text to say (optional)", max_length=limits.MAX_TEXT_CHARS, scale=3,
                          placeholder="e.g. hello, nice to meet you", elem_id=f"{prefix}-text")
        char = gr.Dropdown(choices=[("random", "random")] + choices, value="random", allow_custom_value=True,
                           label="Character", scale=2, elem_id=f"{prefix}-character")
    with gr.Row():
        seed = gr.Number(value=-1, precision=0, label="Seed (-1 = random)", minimum=-1, maximum=limits.MAX_SEED,
                         elem_id=f"{prefix}-seed")
        seconds = gr.Slider(limits.MIN_SECONDS, cap, value=min(default_seconds, cap), step=0.5,
                            label=f"Length in seconds (max {cap:g} s here)", elem_id=f"{prefix}-seconds")
        step = gr.Radio([str(s) for s in limits.STEP_CHOICES], value="4", label="Sampling steps",
                        elem_id=f"{prefix}-steps") if steps else None
    return text, char, seed, seconds, step


def _seed_used(elem_id: str, **kwargs) -> gr.Number:
    """The "Seed used" box: hidden until a run fills it (an empty Number would read 0, a seed never used)."""
    box = gr.Number(None, label="Seed used", interactive=False, precision=0, visible=False, elem_id=elem_id, **kwargs)
    box.change(lambda: gr.Number(visible=True), None, box, api_visibility="private", queue=False,
               show_progress="hidden")
    return box


def build_app(handlers: Handlers, *, streaming: bool | None = None, cache_examples: bool | None = None) -> gr.Blocks:
    studio = handlers.studio
    if streaming is None:
        streaming = bool(shutil.which("ffmpeg") and shutil.which("ffprobe"))
    if cache_examples is None:
        cache_examples = studio is not None
    gallery_items, choices, gallery_error = _gallery_characters()
    gen = dict(concurrency_id="generation", concurrency_limit=limits.GENERATION_CONCURRENCY)

    # delete_cache: Gradio's copies of served files older than 6 h are removed every hour.
    with gr.Blocks(title="Mutual Forcing studio", delete_cache=(3600, 6 * 3600)) as demo:
        gr.Markdown("# Mutual Forcing studio\nA talking character, video and voice generated together, chunk by "
                    "chunk, in 4 to 8 steps per chunk. Pick a tab: make a character **Talk** (streamed), "
                    "**Compare** 4, 8 and 50 steps, step through the **Chunks**, or **Evaluate** your own clips.")
        notice = _notice(studio, handlers.studio_error)
        gr.Markdown(notice, elem_id="notice", visible=bool(notice))
        gr.Markdown(limits.limits_markdown())

        with gr.Tabs():
            # ------------------------------------------------------------ Stream
            with gr.Tab("Talk (stream)", id="stream"):
                s_text, s_char, s_seed, s_seconds, s_steps = _controls(
                    limits.MAX_SECONDS_STREAM, prefix="stream", choices=choices, default_seconds=5.0, steps=True)
                examples_slot = gr.Column()
                with gr.Row():
                    s_btn = gr.Button("▶ Stream", variant="primary", elem_id="stream-run")
                    s_stop = gr.Button("■ Stop", variant="stop", elem_id="stream-stop")
                    g_btn = gr.Button("Generate the whole clip first (no streaming)", elem_id="generate-run")
                if not streaming:
                    gr.Markdown("ℹ Live streaming needs `ffmpeg` and `ffprobe` on this server; they are missing, so "
                                "the player shows the clip so far after each segment instead.")
                s_status = gr.Markdown("Press ▶ Stream: playback starts after the first second is generated.",
                                       label="status", elem_id="stream-status")
                with gr.Row():
                    s_live = gr.Video(label="Live", streaming=streaming, autoplay=True, interactive=False,
                                      elem_id="stream-live", elem_classes=["player"], height=PLAYER_HEIGHT)
                    s_full = gr.Video(label="Full clip (when finished)", interactive=False, buttons=["download"],
                                      elem_id="stream-full", elem_classes=["player"], height=PLAYER_HEIGHT)
                with gr.Row():
                    g_seed = _seed_used("stream-seed-used")
                    g_json = gr.JSON(label="timings")
                with gr.Accordion("Ground truth of this clip, and the clip's numbers against it", open=False):
                    t_btn = gr.Button("Show the ground truth and measure the clip", elem_id="talk-truth-run")
                    with gr.Row():
                        t_video = gr.Video(label="ground truth", interactive=False, elem_id="talk-truth-video",
                                           elem_classes=["player"], height=PLAYER_HEIGHT)
                        t_notes = gr.Markdown(COMPARE_NUMBERS, label="numbers vs ground truth", elem_id="talk-truth")

                def stream_fn(text, character, seed, seconds, steps):
                    yield from handlers.stream(text, character, seed, seconds, steps, live=streaming)

                with examples_slot:  # shown above the buttons: a visitor sees output before waiting
                    gr.Examples(
                        examples=[["hello, I am a tiny talking head", "random", 7, 2.0, "4"],
                                  ["", "3", 42, 2.0, "8"]],
                        inputs=[s_text, s_char, s_seed, s_seconds, s_steps], outputs=[s_full, g_seed, g_json],
                        fn=handlers.generate, cache_examples=bool(cache_examples), cache_mode="eager",
                        label="Examples (pre-generated: click one to see it instantly)",
                    )

                s_event = s_btn.click(stream_fn, [s_text, s_char, s_seed, s_seconds, s_steps],
                                      [s_live, s_status, s_full, g_seed, g_json], api_name="stream", **gen)
                s_stop.click(lambda: "■ stopped", None, s_status, cancels=[s_event], api_name="stop_stream",
                             api_visibility="private", queue=False)
                t_btn.click(handlers.truth_for_clip, [s_full, g_json], [t_video, t_notes], api_name="talk_truth",
                            concurrency_id="evaluate", concurrency_limit=limits.EVAL_CONCURRENCY)
                g_btn.click(handlers.generate, [s_text, s_char, s_seed, s_seconds, s_steps], [s_full, g_seed, g_json],
                            api_name="generate", **gen)

            # ------------------------------------------------------------ Compare
            with gr.Tab("Compare 4 · 8 · 50 steps", id="compare"):
                c_text, c_char, c_seed, c_seconds, _ = _controls(
                    limits.MAX_SECONDS_COMPARE, prefix="compare", choices=choices, default_seconds=2.0, steps=False)
                gallery = gr.Gallery(gallery_items, label="Characters (click one to pick it)", columns=6,
                                     height="auto", allow_preview=False, elem_classes=["thumbs"],
                                     visible=bool(gallery_items), elem_id="compare-gallery")
                if gallery_error:
                    gr.Markdown(f"ℹ {gallery_error}; 'random' still works.")
                with gr.Row():
                    c_btn = gr.Button("Generate at 4, 8 and 50 steps", variant="primary", elem_id="compare-run",
                                      scale=4)
                    c_used = _seed_used("compare-seed-used", scale=1)
                c_base = gr.Checkbox(False, label="naive baseline B: also run 4 plain Euler steps (d = 0) with the "
                                     "same seed, to see what the few-step mode buys at equal cost",
                                     elem_id="compare-baseline")
                players = []
                with gr.Row():
                    for steps in ("truth",) + tuple(limits.COMPARE_STEPS) + ("B",):
                        name = {"truth": "ground truth", "B": "baseline B (4 naive steps)"}.get(steps, f"{steps} steps")
                        with gr.Column(elem_classes=["player"], min_width=200):  # the players side by side
                            video = gr.Video(label=name, elem_id=f"compare-video-{steps}",
                                             buttons=["download"], interactive=False, height=PLAYER_HEIGHT)
                            stats = gr.Markdown(f"{name}: press the button above.", label=f"{name} numbers",
                                                elem_id=f"compare-stats-{steps}")
                            players += [video, stats]
                with gr.Accordion("All timings (JSON)", open=False):
                    c_json = gr.JSON(label="compare timings")
                gr.Markdown(COMPARE_NUMBERS)
                gr.Markdown("RTF = wall seconds per second of output (below 1 = faster than real time). Network "
                            "evaluations = denoising passes of the network (the KV-cache write of a finished chunk "
                            "rides along in the next chunk's first pass). Decode "
                            "share = the part of model+decode time spent in the codecs (the next chunk is sampled "
                            "while this one decodes, so the two can add up to more than the wall time).")
                c_btn.click(handlers.compare, [c_text, c_char, c_seed, c_seconds, c_base],
                            [c_used] + players[:-2] + [c_json] + players[-2:], api_name="compare", **gen)

                def pick(evt: gr.SelectData):
                    return str(evt.index) if evt is not None and evt.index is not None else "random"

                gallery.select(pick, None, c_char, api_name="pick_character", api_visibility="private", queue=False)

            # ------------------------------------------------------------ Chunks
            with gr.Tab("Chunks", id="chunks"):
                k_text, k_char, k_seed, k_seconds, k_steps = _controls(
                    limits.MAX_SECONDS_CHUNKS, prefix="chunks", choices=choices, default_seconds=2.0, steps=True)
                k_btn = gr.Button("Generate chunks (keeps every denoising step)", variant="primary",
                                  elem_id="chunks-run")
                k_summary = gr.Markdown(label="summary", elem_id="chunks-summary")
                # Step latents of a 50-step run are tens of MB: drop a visitor's session after an idle hour.
                k_state = gr.State(None, time_to_live=3600)
                k_slider = gr.Slider(0, 1, value=0, step=1, label="Chunk", interactive=False, elem_id="chunk-slider")
                with gr.Row():
                    k_clip = gr.Video(label="This chunk (video + audio)", interactive=False, elem_id="chunk-video",
                                      elem_classes=["player"], height=PLAYER_HEIGHT, loop=True)
                    with gr.Column():
                        k_audio = gr.Audio(label="This chunk's audio", interactive=False, elem_id="chunk-audio")
                        k_info = gr.Markdown(label="chunk info", elem_id="chunk-info")
                k_steps_gallery = gr.Gallery(label="Decoded latent after each denoising step (middle frame)",
                                             columns=10, height=170, allow_preview=True, elem_classes=["pixelated"],
                                             elem_id="chunk-steps")
                with gr.Row():
                    k_traj = gr.Plot(label="Denoising trajectory, 4 vs 50 steps", elem_id="chunk-trajectory")
                    k_timing = gr.Plot(label="Per-chunk timings", elem_id="chunk-timings")
                with gr.Row():
                    k_new_seed = gr.Number(value=-1, precision=0, label="New seed for the continuation (-1 = random)",
                                           elem_id="chunks-new-seed")
                    k_cont = gr.Button("Continue from this chunk with a new seed", elem_id="chunks-continue")
                with gr.Accordion("Whole clip and timings", open=False):
                    k_full = gr.Video(label="Whole generated clip", interactive=False, buttons=["download"])
                    k_json = gr.JSON(label="timings")
                view = [k_clip, k_audio, k_steps_gallery, k_info, k_timing]
                session_out = [k_state, k_slider, k_full, k_summary, k_traj, k_json] + view
                k_btn.click(handlers.chunks, [k_text, k_char, k_seed, k_seconds, k_steps], session_out,
                            api_name="chunks", **gen)
                k_slider.input(handlers.chunk_view, [k_state, k_slider], view, api_name="chunk_view",
                               api_visibility="private", concurrency_id="view", concurrency_limit=4,
                               trigger_mode="always_last")
                k_cont.click(handlers.continue_from, [k_state, k_slider, k_new_seed], session_out,
                             api_name="continue_from", api_visibility="private", **gen)

            # ------------------------------------------------------------ Evaluate
            with gr.Tab("Evaluate", id="evaluate"):
                gr.Markdown("Upload generated clips and, for PESQ/FID, the matching references (paired by file "
                            f"name stem). A zip or several files per set; at most {limits.MAX_EVAL_CLIPS} clips and "
                            f"{limits.MAX_UPLOAD_MB} MB per upload. Sync needs no references.")
                if handlers.eval_error:
                    gr.Markdown(f"⚠ Evaluation is unavailable on this server: {handlers.eval_error}")
                fid_note = _fid_note()
                if fid_note:
                    gr.Markdown(fid_note, elem_id="fid-note")
                gr.Markdown(f"Accepted: .zip and {' '.join(MEDIA_EXTS)}; any other file becomes its own error row. "
                            "Progress shows as each clip is scored.")
                with gr.Row():
                    # No file_types filter: Gradio would refuse the whole request for one stray file, while
                    # the CLI gives that file an error row; eval.sets decides for both.
                    e_gen = gr.File(file_count="multiple", label="Generated set (zip or media files)",
                                    elem_id="eval-gen")
                    e_ref = gr.File(file_count="multiple", label="Reference set (optional for sync)",
                                    elem_id="eval-ref")
                with gr.Row():
                    e_metrics = gr.CheckboxGroup(handlers.metric_choices(), value=handlers.default_metrics(),
                                                 label="Metrics", elem_id="eval-metrics", scale=3)
                    e_windows = gr.Textbox("0-5,5-15,15-25", label="Time windows (seconds)", scale=1,
                                           elem_id="eval-windows")
                with gr.Row():
                    e_btn = gr.Button("Evaluate", variant="primary", elem_id="eval-run")
                    e_ex_btn = gr.Button("Score the example set", elem_id="eval-examples",
                                         visible=bool(handlers.example_set()[0]))
                gr.Markdown(EXAMPLE_SET_NOTE)
                e_notes = gr.Markdown(label="notes", elem_id="eval-notes")
                e_summary = gr.Markdown(label="summary", elem_id="eval-summary")
                e_table = gr.Dataframe(label="Per clip (errors are rows too)", interactive=False, wrap=True,
                                       elem_id="eval-table")
                with gr.Row():
                    e_plots = [gr.Plot(label=label, elem_id=f"eval-plot-{i}") for i, label in
                               enumerate(("Sync offsets", "PESQ per clip", "Metrics per time window"))]
                e_files = gr.File(label="Downloads (CSV, JSON)", file_count="multiple", interactive=False,
                                  elem_id="eval-downloads")
                e_btn.click(handlers.evaluate, [e_gen, e_ref, e_metrics, e_windows],
                            [e_summary, e_table, *e_plots, e_files, e_notes], api_name="evaluate",
                            concurrency_id="evaluate", concurrency_limit=limits.EVAL_CONCURRENCY)
                e_ex_btn.click(handlers.evaluate_examples, [e_metrics, e_windows],
                               [e_summary, e_table, *e_plots, e_files, e_notes], api_name="evaluate_examples",
                               concurrency_id="evaluate", concurrency_limit=limits.EVAL_CONCURRENCY)

            # ------------------------------------------------------------ About
            with gr.Tab("About", id="about"):
                gr.Markdown(METHOD)
                ablation_fig, ablation_text = handlers.ablation()
                gr.Markdown(ablation_text, elem_id="about-ablation-text")
                if ablation_fig is not None:
                    gr.Plot(value=ablation_fig, label="Factor ablation: corpus-FD per time window",
                            elem_id="about-ablation")
                gr.Markdown("## How to cite\n\n" + CITATION)
                card = os.path.join(handlers.assets or "assets", "MODEL_CARD.md")
                if os.path.isfile(card):
                    with open(card, encoding="utf-8") as f:
                        text = f.read()
                    # Long and written for the repository: folded, so the method and citation stay in view.
                    with gr.Accordion(f"Model card ({card})", open=False, elem_id="model-card"):
                        gr.Markdown(text)
                else:
                    gr.Markdown(f"**Model card**: `{card}` is not present in this build.")
    return demo
