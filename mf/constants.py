"""Constants shared by the corpus, the codecs, the model, eval and the app.

One time axis for everything: video frame i sits at i / FPS seconds and mel frame j at
j * HOP / SAMPLE_RATE seconds, so one video frame covers exactly MELS_PER_FRAME mel frames.
Offsets follow SyncNet's sign convention: positive = audio leads video.
"""

FPS = 25
SAMPLE_RATE = 16_000
HOP = 160
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
MELS_PER_FRAME = SAMPLES_PER_FRAME // HOP  # 4
# Corpus seeds at or above this are held out: never rendered for training, used only for evaluation.
HELDOUT_SEED_START = 1_000_000_000
