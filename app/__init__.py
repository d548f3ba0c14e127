"""The Gradio workbench: ui (layout), handlers (events), runs (generation), evaluate, plots, server."""
