"""Startup of the workbench: load the studio once, find the eval package, build and launch the app.

The studio (model + codecs) is loaded exactly once per process and shared read-only by every
request. When a backend cannot be loaded the app still starts and says why on the page (a Space
that shows an explanation beats one that crashes at boot); the reason is also logged. The standard
metric weights (Inception, SyncNet) are fetched by a daemon thread started here (``eval.weights.prefetch``,
off with MF_NO_DOWNLOAD=1): startup and requests never wait for it; a request made meanwhile scores
without them and says they are being downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os

from app import limits
from app.handlers import Handlers
from app.workspace import Workspace

log = logging.getLogger("mf.app")


def load_backends(assets: str = "assets", device: str = "cpu"):
    """(studio, generate, studio_error, score_sets, eval_plots, metrics, eval_error); errors are strings."""
    studio = generate = studio_error = None
    try:
        from mf.pipeline import generate, load_studio, warm_up

        studio = load_studio(assets=assets, device=device)
        log.info("studio warmed up in %.2f s", warm_up(studio))   # one-time costs before the first visitor
    except Exception as exc:  # noqa: BLE001 - reported on the page instead of crashing the Space
        log.exception("loading the studio failed")
        studio, generate = None, None
        studio_error = f"the model could not be loaded ({type(exc).__name__}: {exc})"
    score_sets = eval_plots = metrics = eval_error = None
    try:
        from eval import score as eval_score

        score_sets = eval_score.score_sets
        metrics = eval_score.METRICS
        try:
            from eval import plots as eval_plots
        except Exception as exc:  # noqa: BLE001 - tables and downloads still work without charts
            log.warning("eval.plots unavailable: %s", exc)
    except Exception as exc:  # noqa: BLE001
        log.exception("loading the eval package failed")
        eval_error = f"the eval package could not be loaded ({type(exc).__name__}: {exc})"
    return studio, generate, studio_error, score_sets, eval_plots, metrics, eval_error


def smoke_test(studio, generate) -> str | None:
    """One 1-step, one-frame generation: a broken pipeline is reported on the page, not found by a visitor."""
    try:
        for _ in generate(studio, steps=1, seed=0, seconds=0.04):
            pass
    except Exception as exc:  # noqa: BLE001
        log.exception("the generation smoke test failed")
        return f"a test generation failed ({type(exc).__name__}: {exc})"
    return None


def _examples_cache_dir(assets: str) -> str:
    """Cached example outputs keyed by the model files, so retrained weights never show stale clips."""
    digest = hashlib.sha1()
    for folder in ("model", "codecs"):
        root = os.path.join(assets, folder)
        for dirpath, _, files in sorted(os.walk(root)):
            for name in sorted(files):
                st = os.stat(os.path.join(dirpath, name))
                digest.update(f"{dirpath}/{name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return os.path.join(".gradio", "cached_examples", digest.hexdigest()[:12])


def start_weight_prefetch():
    """The background fetch of the standard metric weights; None when it did not start (never raises)."""
    try:
        from eval.weights import prefetch

        return prefetch()
    except Exception as exc:  # noqa: BLE001 - the app works without them (metrics say they are missing)
        log.warning("standard weights prefetch not started: %s", exc)
        return None


def create_app(assets: str = "assets", device: str = "cpu", workdir: str | None = None, **build_kwargs):
    """(demo, handlers): the queued Blocks app, ready for ``launch(**launch_kwargs(handlers))``."""
    from app.ui import build_app

    os.environ.setdefault("GRADIO_EXAMPLES_CACHE", _examples_cache_dir(assets))
    start_weight_prefetch()  # first, so the download overlaps loading the model
    studio, generate, studio_error, score_sets, eval_plots, metrics, eval_error = load_backends(assets, device)
    if studio is not None:
        studio_error = smoke_test(studio, generate)
        if studio_error:  # caching the examples at launch would crash the app: show the reason instead
            studio = generate = None
    handlers = Handlers(studio, generate, Workspace(workdir or os.environ.get("MF_APP_WORKDIR")),
                        studio_error=studio_error, score_sets=score_sets, eval_plots=eval_plots,
                        eval_error=eval_error, metrics=metrics, assets=assets)
    if "cache_examples" not in build_kwargs and os.environ.get("MF_APP_CACHE_EXAMPLES", "").strip() in ("0", "false"):
        build_kwargs["cache_examples"] = False  # tests: skip generating the examples at startup
    demo = build_app(handlers, **build_kwargs)
    demo.queue(default_concurrency_limit=limits.GENERATION_CONCURRENCY, max_size=limits.QUEUE_MAX_SIZE)
    return demo, handlers


def launch_kwargs(handlers: Handlers) -> dict:
    from app.ui import CSS, THEME

    return dict(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", 7860)),
        allowed_paths=[handlers.workspace.root],
        max_file_size=f"{limits.MAX_UPLOAD_MB}mb",
        theme=THEME, css=CSS, show_error=True, ssr_mode=False,
    )


def main() -> None:
    """``python app.py`` / ``mf-app``: serve the workbench (GRADIO_SERVER_NAME/PORT, MF_ASSETS, MF_TORCH_THREADS)."""
    import torch

    # One intra-op thread per request: requests run side by side and the pipeline already samples the
    # next chunk in a worker thread while the current one decodes; more threads thrash 2 CPU cores.
    torch.set_num_threads(int(os.environ.get("MF_TORCH_THREADS", 1)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo, handlers = create_app(assets=os.environ.get("MF_ASSETS", "assets"))
    demo.launch(**launch_kwargs(handlers))
