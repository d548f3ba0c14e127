"""What the generator is conditioned on, as one batched tensor bundle: ``Conditions``.

Owns the condition tensors' layout and the helpers that slice them per chunk, batch them for
classifier-free guidance and build them from the corpus (a character id, a script) at inference.

- ``ref_latent`` [B, C, h, w]: the video latent of a reference frame (identity). The model turns it
  into a global prefix that every chunk attends to (the KV cache's sink).
- ``attributes`` [B, A]: the character's attribute vector (the "caption", ``Character.attributes()``).
- ``phone_ids`` [B, F] int64 at the mel rate (4 per video frame): the timed phoneme script.
- ``text_dropped`` [B] bool: True replaces the script by a learned "no script" embedding. Training drops
  the script at random so that generation without a script and classifier-free guidance both work.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mf.constants import FPS, MELS_PER_FRAME


@dataclass
class Conditions:
    ref_latent: torch.Tensor      # float [B, C, h, w]
    attributes: torch.Tensor      # float [B, A]
    phone_ids: torch.Tensor       # int64 [B, F] at the mel rate
    text_dropped: torch.Tensor    # bool [B]

    def __post_init__(self):
        b = self.ref_latent.shape[0]
        if self.ref_latent.dim() != 4:
            raise ValueError(f"ref_latent must be [B, C, h, w], got {tuple(self.ref_latent.shape)}")
        if self.attributes.dim() != 2 or self.attributes.shape[0] != b:
            raise ValueError(f"attributes must be [B={b}, A], got {tuple(self.attributes.shape)}")
        if self.phone_ids.dim() != 2 or self.phone_ids.shape[0] != b:
            raise ValueError(f"phone_ids must be [B={b}, F], got {tuple(self.phone_ids.shape)}")
        if self.text_dropped.shape != (b,):
            raise ValueError(f"text_dropped must be [B={b}], got {tuple(self.text_dropped.shape)}")

    @property
    def batch_size(self) -> int:
        return int(self.ref_latent.shape[0])

    def to(self, device=None, dtype=None) -> "Conditions":
        return Conditions(
            ref_latent=self.ref_latent.to(device=device, dtype=dtype),
            attributes=self.attributes.to(device=device, dtype=dtype),
            phone_ids=self.phone_ids.to(device=device),
            text_dropped=self.text_dropped.to(device=device),
        )

    def mel_slice(self, start: int, stop: int) -> "Conditions":
        """The same conditions with the script restricted to mel frames [start, stop)."""
        if stop > self.phone_ids.shape[1]:
            raise ValueError(f"script covers {self.phone_ids.shape[1]} mel frames, asked for up to {stop}")
        return Conditions(self.ref_latent, self.attributes, self.phone_ids[:, start:stop], self.text_dropped)

    def chunk_slice(self, first_chunk: int, n_chunks: int, frames_per_chunk: int) -> "Conditions":
        """Conditions for chunks [first_chunk, first_chunk + n_chunks) of a longer script."""
        mels = frames_per_chunk * MELS_PER_FRAME
        return self.mel_slice(first_chunk * mels, (first_chunk + n_chunks) * mels)

    def with_text_dropped(self) -> "Conditions":
        """The unconditional branch of classifier-free guidance: same identity, no script."""
        return Conditions(self.ref_latent, self.attributes, self.phone_ids,
                          torch.ones_like(self.text_dropped))

    @staticmethod
    def cat(items: list["Conditions"]) -> "Conditions":
        return Conditions(
            ref_latent=torch.cat([c.ref_latent for c in items]),
            attributes=torch.cat([c.attributes for c in items]),
            phone_ids=torch.cat([c.phone_ids for c in items]),
            text_dropped=torch.cat([c.text_dropped for c in items]),
        )

    def repeat_for_cfg(self) -> "Conditions":
        """[cond; uncond] stacked on the batch axis, so one forward evaluates both branches."""
        return Conditions.cat([self, self.with_text_dropped()])


def script_phones(text: str | None, seconds: float, seed: int) -> tuple[list, bool, str]:
    """The timed script a clip of ``seconds`` is conditioned on -> (phones on the video clock, text_dropped, note).

    - ``text`` a sentence: timed by the corpus's rule-based front end (``text_to_phones``); a script
      longer than the clip is cut (the note says so) and ``phone_ids`` pads a shorter one with silence.
    - ``text`` None: the character babbles a random script drawn from ``seed`` (the corpus's
      ``random_script``), so "press generate" shows a talking character.
    - ``text`` "" (blank): no script at all (no phones); the learned "no script" embedding is used (text_dropped).
    Timing jitter is deterministic in ``seed``. ``mf.data.render_clip(phones=...)`` renders the corpus
    clip of exactly this script (the ground truth a generation is measured against).
    """
    from mf.data.script import random_script, text_to_phones  # the corpus owns the front end

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5C819]))
    if text is not None and not text.strip():
        return [], True, "no script: the model improvises"
    if text is None:
        return random_script(rng, 0.0, seconds), False, "random babble script (no text given)"
    phones = text_to_phones(text, rng=rng)
    spoken = phones[-1].end if phones else 0.0
    note = f"the script needs {spoken:.1f} s; cut at {seconds:.1f} s" if spoken > seconds + 1e-6 else ""
    return phones, False, note


def script_phone_ids(text: str | None, n_mels: int, seed: int) -> tuple[np.ndarray, bool, str]:
    """Phoneme ids at the mel rate for a clip of ``n_mels`` mel frames -> (ids, text_dropped, note).

    The script is ``script_phones(text, n_mels / mel_rate, seed)``; "no script" is all zeros.
    """
    from mf.data.script import phone_ids

    mel_rate = FPS * MELS_PER_FRAME
    phones, dropped, note = script_phones(text, n_mels / mel_rate, seed)
    if dropped:
        return np.zeros(n_mels, dtype=np.int64), True, note
    ids = phone_ids(phones, n_mels, mel_rate)
    return np.asarray(ids, dtype=np.int64), False, note
