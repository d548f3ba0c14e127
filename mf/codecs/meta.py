"""The small JSON file beside each codec's weights: its kind, shapes and normalisation statistics.

Both codecs save and load it the same way, so a folder holding the wrong codec, or none, fails
with the same clear message.
"""

from __future__ import annotations

import json
from pathlib import Path

CODEC_FILE = "codec.json"


def write_codec_meta(directory: Path, meta: dict) -> None:
    (Path(directory) / CODEC_FILE).write_text(json.dumps(meta, indent=1))


def read_codec_meta(directory: Path, kind: str) -> dict:
    """The codec.json of `directory`, checked to describe a codec of `kind` ("video" or "audio")."""
    meta_path = Path(directory) / CODEC_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{kind} codec folder {str(directory)!r} has no {CODEC_FILE}; "
                                "train it with `python -m mf.train codecs --preset tiny`")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != kind:
        an = "an" if kind[0] in "aeiou" else "a"
        raise ValueError(f"{meta_path}: not {an} {kind} codec (kind={meta.get('kind')!r})")
    return meta
