"""The real recordings some tests read from ``../shared/data`` (beside the checkout, not in it), and how to get them.

Nothing there is made by this project, so it cannot ship: tests that need it skip with a reason that
says what the files are and where an equivalent comes from. Tests that can run on data the project
makes itself (corpus renders) do so instead of skipping.
"""

from __future__ import annotations

import os

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
REAL_AV = os.path.join(DATA, "real_av")
PESQ_PEER = os.path.join(DATA, "pesq_peer")

REAL_AV_HOWTO = ("../shared/data/real_av is absent: it holds real talking-face clips with in-sync audio (talk1.mp4 "
                 "6.1 s variable frame rate, talk2.mp4 and talk3.mp4 5 s at 25 fps; AAC 44.1 kHz stereo), the "
                 "example inputs examples/face/*.mp4 of github.com/OpenTalker/video-retalking (Apache-2.0); put "
                 "such clips there under these names to run this test")
PESQ_PEER_HOWTO = ("../shared/data/pesq_peer is absent: it holds speech.wav and speech_bab_0dB.wav (16 kHz mono), "
                   "the reference pair in the audio/ folder of the pesq package's repository github.com/ludlows/PESQ "
                   "(MIT); copy them there to run this test")
