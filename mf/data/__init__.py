"""Procedural talking-character corpus: characters, scripts, voice, face, clips and datasets.

Public API (see docs/ARCHITECTURE.md):
    PHONEMES, N_PHONEMES, CHARACTER_ATTR_DIM, Character, character, Phone, CorpusClip,
    render_clip, render_clips, render_frames, text_to_phones, phone_ids, CorpusDataset, FolderDataset
Modules: phonemes (inventory and phonetic tables), characters (identity), script (text front end,
babble, phone ids), prosody (intonation, loudness), voice (speech synthesis), face (frames),
render (clips), datasets (torch datasets), preview (CLI).
"""

from mf.data.characters import CHARACTER_ATTR_DIM, Character, character
from mf.data.phonemes import N_PHONEMES, PHONEMES, SIL_ID, UNK_ID
from mf.data.render import CorpusClip, render_clip, render_clips, render_frames
from mf.data.script import Phone, phone_ids, text_to_phones

__all__ = [
    "PHONEMES", "N_PHONEMES", "SIL_ID", "UNK_ID", "CHARACTER_ATTR_DIM", "Character", "character",
    "Phone", "CorpusClip", "render_clip", "render_clips", "render_frames", "text_to_phones", "phone_ids",
    "CorpusDataset", "FolderDataset",
]


def __getattr__(name):
    # The datasets import torch; load them on first use so numpy-only users stay light.
    if name in ("CorpusDataset", "FolderDataset"):
        from mf.data import datasets
        return getattr(datasets, name)
    raise AttributeError(f"module 'mf.data' has no attribute {name!r}")
