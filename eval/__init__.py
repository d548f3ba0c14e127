"""Evaluation of generated talking-character sets (library + ``python -m eval`` CLI).

Modules (import the one you need; nothing heavy is imported here):

* ``eval.sets``          load a generated/reference set from a zip, a folder or files; pair by name
* ``eval.sync``          weight-free audio-video offset (+ SyncNet scores when weights are supplied)
* ``eval.audio_metrics`` PESQ wb/nb and STOI/ESTOI with resampling, alignment and explained NaNs
* ``eval.frechet``       FID/KID (torchmetrics + Inception when its weights exist), corpus-FD, generic FD/KID
* ``eval.features``      the offline corpus feature extractor behind corpus-FD (and its training command)
* ``eval.score``         ``score_sets(generated, reference, metrics, windows, progress, workers=N) -> Report``
* ``eval.isolation``     crash-isolated worker processes (a segfaulting metric costs one row)
* ``eval.report``        ``Report`` (JSON/CSV), aggregation, path scrubbing
* ``eval.set_metrics``   frames sampled per clip -> FID/KID and corpus-FD/KID per window
* ``eval.bench_score``   time and peak memory of set scoring at two set sizes
* ``eval.plots``         plotly figures of a ``Report``
* ``eval.bench``         speed and memory benchmark of the shipped generator (``python -m eval.bench``)
* ``eval.ablation``      systems x steps x metrics table of the model card (``python -m eval.ablation``)
* ``eval.sheet``         contact sheet of real vs generated frames and spectrograms (``python -m eval.sheet``)
* ``eval.codec_eval``    codec PSNR / PESQ-wb / decode cost on held-out seeds (``python -m eval.codec_eval``)
"""
