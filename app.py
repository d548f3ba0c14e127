"""Mutual Forcing studio: `python app.py` (or `mf-app`) serves the Gradio workbench on 127.0.0.1:7860.

GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override the address (a Hugging Face Space sets them);
MF_ASSETS points at another assets folder; MF_TORCH_THREADS sets torch's intra-op threads (default 1);
MF_APP_WORKDIR is where per-request files go (default: a temporary folder). The layout lives in
app/ui.py, the work in app/handlers.py, startup in app/server.py.
"""

from app.server import main

if __name__ == "__main__":
    main()
