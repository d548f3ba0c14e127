"""Mutual Forcing studio: `python app.py` serves the Gradio workbench on 127.0.0.1:7860.

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override the address (a Hugging Face Space sets them);
MF_ASSETS points at another assets folder. The layout lives in app/ui.py, the work in app/handlers.py.
"""

import logging
import os

from app.server import create_app, launch_kwargs

if __name__ == "__main__":
    import torch

    # One intra-op thread per request: requests run side by side and the pipeline already samples the
    # next chunk in a worker thread while the current one decodes; more threads thrash 2 CPU cores.
    torch.set_num_threads(int(os.environ.get("MF_TORCH_THREADS", 1)))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo, handlers = create_app(assets=os.environ.get("MF_ASSETS", "assets"))
    demo.launch(**launch_kwargs(handlers))
