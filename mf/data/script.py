"""Scripts: what a character says and when, as timed phones on the video clock.

Owns: ``Phone``; the rule-based text front end ``text_to_phones``; random babble scripts
(``random_script``) made of English-like syllables; ``phone_ids`` (phoneme id per frame at any
frame rate, e.g. 100 Hz mel frames or 25 Hz video frames).

Timing model: every phone gets a base duration by class (vowels ~110 ms, diphthongs ~170 ms,
plosives ~75 ms ...), divided by the speaking rate, times a log-normal jitter when a generator is
given (without one the timing is fully deterministic), lengthened on stressed vowels and at the
end of a phrase. Phrases are separated by silences; punctuation in text sets their length.

Text front end: a small lexicon of frequent words, then letter-to-sound rules (digraphs such as
th/sh/ch/ng/ee/oo, the "magic e" that lengthens the vowel before it, c/g softening before e/i/y,
double letters read once). Digits are spelled out, accents stripped, other symbols ignored.
Raw phonemes can be written inside square brackets: "say [hh ah l ow]".
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from mf.data.phonemes import AFFRICATES, FRICATIVES, NASALS, PHONE_INDEX, PHONEMES, PLOSIVES, SIL_ID, VOWELS


@dataclass
class Phone:
    """One phone of a script: ``symbol`` from PHONEMES, ``start``/``end`` in seconds (video clock)."""

    symbol: str
    start: float
    end: float

    @property
    def duration(self) -> float:
        return self.end - self.start


DIPHTHONGS = frozenset("ay aw ey ow oy".split())

# Reference durations in seconds at rate 1.
_BASE_DURATION = {
    "vowel": 0.105, "diphthong": 0.165, "plosive": 0.075, "affricate": 0.10, "fricative": 0.09,
    "nasal": 0.07, "approximant": 0.06, "hh": 0.06,
}
_PAUSE = {",": 0.22, ";": 0.3, ":": 0.3, ".": 0.42, "!": 0.42, "?": 0.42, "word": 0.0}
LEAD_SILENCE = 0.2
TAIL_SILENCE = 0.25


def _base_duration(symbol: str) -> float:
    if symbol in DIPHTHONGS:
        return _BASE_DURATION["diphthong"]
    if symbol in VOWELS:
        return _BASE_DURATION["vowel"]
    if symbol == "hh":
        return _BASE_DURATION["hh"]
    if symbol in PLOSIVES:
        return _BASE_DURATION["plosive"]
    if symbol in AFFRICATES:
        return _BASE_DURATION["affricate"]
    if symbol in FRICATIVES:
        return _BASE_DURATION["fricative"]
    if symbol in NASALS:
        return _BASE_DURATION["nasal"]
    return _BASE_DURATION["approximant"]


def check_symbol(symbol: str) -> str:
    if symbol not in PHONE_INDEX:
        raise ValueError(f"unknown phoneme {symbol!r}; known phonemes: {' '.join(PHONEMES)}")
    return symbol


# ---------------------------------------------------------------------------------------------
# Text -> phonemes

_LEXICON: dict[str, str] = {
    "a": "ah", "an": "ae n", "the": "dh ah", "i": "ay", "you": "y uw", "he": "hh iy",
    "she": "sh iy", "we": "w iy", "they": "dh ey", "me": "m iy", "my": "m ay", "your": "y ao r",
    "is": "ih z", "are": "aa r", "was": "w ah z", "were": "w er", "be": "b iy", "been": "b ih n",
    "to": "t uw", "do": "d uw", "does": "d ah z", "of": "ah v", "and": "ae n d", "or": "ao r",
    "for": "f ao r", "from": "f r ah m", "have": "hh ae v", "has": "hh ae z", "one": "w ah n",
    "two": "t uw", "three": "th r iy", "four": "f ao r", "five": "f ay v", "six": "s ih k s",
    "seven": "s eh v ah n", "eight": "ey t", "nine": "n ay n", "ten": "t eh n", "zero": "z iy r ow",
    "hello": "hh ah l ow", "hi": "hh ay", "there": "dh eh r", "their": "dh eh r", "where": "w eh r",
    "what": "w ah t", "who": "hh uw", "why": "w ay", "how": "hh aw", "now": "n aw", "no": "n ow",
    "yes": "y eh s", "so": "s ow", "go": "g ow", "says": "s eh z", "said": "s eh d",
    "world": "w er l d", "good": "g uh d", "could": "k uh d", "would": "w uh d",
    "should": "sh uh d", "people": "p iy p ah l", "thanks": "th ae ng k s", "thank": "th ae ng k",
    "this": "dh ih s", "that": "dh ae t", "with": "w ih dh", "it": "ih t", "its": "ih t s",
    "not": "n aa t", "can": "k ae n", "will": "w ih l", "all": "ao l", "day": "d ey",
    "today": "t ah d ey", "friend": "f r eh n d", "love": "l ah v", "some": "s ah m",
    "come": "k ah m", "done": "d ah n", "eye": "ay", "very": "v eh r iy", "many": "m eh n iy",
    "any": "eh n iy", "again": "ah g eh n", "want": "w aa n t", "talk": "t ao k",
    "walk": "w ao k", "know": "n ow", "video": "v ih d iy ow", "audio": "ao d iy ow",
    "model": "m aa d ah l", "speak": "s p iy k", "voice": "v oy s", "welcome": "w eh l k ah m",
    "studio": "s t uw d iy ow", "our": "aw r", "out": "aw t", "about": "ah b aw t",
}

_DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Letter-to-sound rules, longest first. Each maps a spelling to phonemes ("" = silent).
_RULES: tuple[tuple[str, str], ...] = (
    ("tch", "ch"), ("igh", "ay"), ("ough", "ao"), ("augh", "ao"), ("eigh", "ey"),
    ("th", "th"), ("sh", "sh"), ("ch", "ch"), ("ph", "f"), ("wh", "w"), ("ck", "k"),
    ("ng", "ng"), ("qu", "k w"), ("gh", ""), ("kn", "n"), ("wr", "r"),
    ("ee", "iy"), ("ea", "iy"), ("ie", "iy"), ("oo", "uw"), ("ou", "aw"), ("ow", "ow"),
    ("oi", "oy"), ("oy", "oy"), ("ai", "ey"), ("ay", "ey"), ("ey", "ey"), ("au", "ao"),
    ("aw", "ao"), ("oa", "ow"), ("ew", "uw"), ("ue", "uw"),
    ("er", "er"), ("ir", "er"), ("ur", "er"), ("ar", "aa r"), ("or", "ao r"),
    ("x", "k s"), ("j", "jh"), ("y", "y"), ("q", "k"),
    ("a", "ae"), ("e", "eh"), ("i", "ih"), ("o", "aa"), ("u", "ah"),
    ("b", "b"), ("d", "d"), ("f", "f"), ("h", "hh"), ("k", "k"), ("l", "l"), ("m", "m"),
    ("n", "n"), ("p", "p"), ("r", "r"), ("s", "s"), ("t", "t"), ("v", "v"), ("w", "w"),
    ("z", "z"),
)
_MAGIC_E = {"a": "ey", "i": "ay", "o": "ow", "u": "uw", "e": "iy"}
_LETTER_VOWELS = set("aeiou")


def word_to_phonemes(word: str) -> list[str]:
    """Phonemes of one lower-case alphabetic word (lexicon first, then spelling rules)."""
    if word in _LEXICON:
        return _LEXICON[word].split()
    w = re.sub(r"([bcdfghjklmnpqrstvwxz])\1", r"\1", word)  # double letters read once
    out: list[str] = []
    i = 0
    n = len(w)
    while i < n:
        rest = w[i:]
        ch = w[i]
        nxt = w[i + 1] if i + 1 < n else ""
        # magic e: vowel + single consonant + final e ("make", "time", "home")
        if (ch in _MAGIC_E and i + 3 == n and w[-1] == "e" and nxt not in _LETTER_VOWELS
                and nxt not in ("", "r", "w", "y")):
            out.append(_MAGIC_E[ch])
            out.extend(word_to_phonemes(nxt) if nxt != "c" else ["s"])
            break
        if ch == "e" and i == n - 1 and n > 2 and out:  # silent final e
            break
        if ch == "y":  # y: consonant at the start, vowel elsewhere
            if i == 0:
                out.append("y")
            else:
                out.append("ay" if n <= 3 else "iy")
            i += 1
            continue
        if ch == "c":
            out.append("s" if nxt in ("e", "i", "y") else "k")
            i += 1 if nxt != "c" else 2
            continue
        if ch == "g" and nxt in ("e", "i", "y") and i > 0:
            out.append("jh")
            i += 1
            continue
        if ch == "s" and 0 < i < n - 1 and w[i - 1] in _LETTER_VOWELS and nxt in _LETTER_VOWELS:
            out.append("z")  # intervocalic s is voiced ("easy", "music")
            i += 1
            continue
        for spelling, phones in _RULES:
            if rest.startswith(spelling):
                out.extend(phones.split())
                i += len(spelling)
                break
        else:  # letters outside the rules (cannot happen for a-z) are skipped
            i += 1
    voiced = VOWELS | {"b", "d", "g", "m", "n", "l", "r", "v"}
    if word.endswith("s") and len(out) >= 2 and out[-1] == "s" and out[-2] in voiced:
        out[-1] = "z"  # plural / verb -s after a voiced sound
    return out or ["ah"]


def _tokenise(text: str) -> list[tuple[str, str]]:
    """Split text into ('word', letters) / ('raw', phonemes) / ('pause', mark) tokens."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    tokens: list[tuple[str, str]] = []
    for match in re.finditer(r"\[([^\]]*)\]|([A-Za-z']+)|([0-9])|([,.;:!?])", text):
        raw, word, digit, mark = match.groups()
        if raw is not None:
            tokens.append(("raw", raw))
        elif word is not None:
            tokens.append(("word", word.lower().replace("'", "")))
        elif digit is not None:
            tokens.append(("word", _DIGITS[int(digit)]))
        else:
            tokens.append(("pause", mark))
    return tokens


def _stressed_vowel_index(phonemes: list[str]) -> int:
    """Index of the vowel that carries the word stress (first vowel: English-like default)."""
    for i, p in enumerate(phonemes):
        if p in VOWELS:
            return i
    return -1


def _durations(words: list[list[str]], rate: float, rng: np.random.Generator | None,
               stress: list[int], phrase_final: list[bool]) -> list[list[float]]:
    out = []
    for phones, s, final in zip(words, stress, phrase_final):
        durs = []
        for i, p in enumerate(phones):
            d = _base_duration(p) / rate
            if i == s:
                d *= 1.3
            if final and i >= len(phones) - 2:
                d *= 1.35  # phrase-final lengthening
            if rng is not None:
                d *= float(np.exp(rng.normal(0.0, 0.18)))
            durs.append(max(d, 0.03))
        out.append(durs)
    return out


def text_to_phones(text: str, *, rate: float = 1.0, rng: np.random.Generator | None = None,
                   start: float = 0.0) -> list[Phone]:
    """Phones for ``text``, starting at ``start`` seconds with a short lead-in silence.

    ``rate`` > 1 speaks faster. With ``rng`` durations get natural jitter; without, timing is a
    pure function of the text and rate. Raises ValueError for text with nothing to say or an
    unknown phoneme inside [brackets].
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    if not (rate > 0 and np.isfinite(rate)):
        raise ValueError(f"rate must be a positive number, got {rate}")
    tokens = _tokenise(text)
    words: list[list[str]] = []
    pauses_after: list[str] = []
    for kind, value in tokens:
        if kind == "pause":
            if words:
                pauses_after[-1] = value
            continue
        if kind == "raw":
            phonemes = [check_symbol(s) for s in value.split()]
            if not phonemes:
                continue
        else:
            phonemes = word_to_phonemes(value)
        words.append(phonemes)
        pauses_after.append("word")
    if not words:
        raise ValueError(f"text has no words to speak: {text[:60]!r}")
    phrase_final = [p != "word" for p in pauses_after]
    phrase_final[-1] = True
    stress = [_stressed_vowel_index(w) for w in words]
    durations = _durations(words, rate, rng, stress, phrase_final)

    phones = [Phone("sil", start, start + LEAD_SILENCE)]
    t = start + LEAD_SILENCE
    for word, durs, pause in zip(words, durations, pauses_after):
        for symbol, d in zip(word, durs):
            phones.append(Phone(symbol, t, t + d))
            t += d
        gap = _PAUSE[pause] / rate
        if gap > 0:
            phones.append(Phone("sil", t, t + gap))
            t += gap
    if phones[-1].symbol != "sil":
        phones.append(Phone("sil", t, t + TAIL_SILENCE))
    return phones


def is_question(text: str | None) -> bool:
    return bool(text) and text.rstrip().endswith("?")


# ---------------------------------------------------------------------------------------------
# Random babble scripts

# Rough English frequencies, so babble sounds like a language rather than noise.
_ONSETS = ("t d n s m l r k b p hh w f g y v dh th sh ch jh z").split()
_ONSET_P = np.array([9, 6, 8, 7, 6, 6, 6, 6, 4, 4, 4, 3, 3, 2, 2, 2, 3, 1, 2, 1, 1, 1], float)
_CLUSTERS = ("s t", "s p", "s k", "p r", "t r", "k r", "b r", "g r", "f r", "p l", "k l", "b l",
             "s l", "f l", "s m", "s n", "th r")
_CODAS = ("n t s d r l m k z ng p f v sh th").split()
_CODA_P = np.array([9, 8, 6, 5, 5, 5, 4, 4, 3, 2, 2, 2, 1, 1, 1], float)
_NUCLEI = ("ah ih eh ae iy aa er uw ey ay ow ao uh aw oy").split()
_NUCLEUS_P = np.array([10, 9, 6, 6, 6, 4, 3, 3, 3, 3, 3, 2, 1, 1, 0.5], float)
_SHAPES = ("CV", "CVC", "V", "VC", "CCV", "CVCC", "CCVC")
_SHAPE_P = np.array([40, 28, 6, 8, 7, 5, 6], float)


def _pick(rng: np.random.Generator, items, p) -> str:
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _random_syllable(rng: np.random.Generator) -> list[str]:
    shape = _pick(rng, _SHAPES, _SHAPE_P)
    out: list[str] = []
    if shape.startswith("CC"):
        out += _CLUSTERS[int(rng.integers(len(_CLUSTERS)))].split()
    elif shape.startswith("C"):
        out.append(_pick(rng, _ONSETS, _ONSET_P))
    out.append(_pick(rng, _NUCLEI, _NUCLEUS_P))
    codas = shape.split("V", 1)[1]
    for _ in codas:
        c = _pick(rng, _CODAS, _CODA_P)
        if c not in out[-1:]:
            out.append(c)
    return out


def random_script(rng: np.random.Generator, start: float, end: float, rate: float = 1.0) -> list[Phone]:
    """Babble from ``start`` to at least ``end`` seconds: phrases of 2-7 pseudo-words between pauses.

    The first phrase starts after a random silence (so clips do not all open mid-word) and one
    phrase in a few is followed by a long pause, so the model also sees the character listening.
    """
    phones: list[Phone] = []
    t = start
    gap = float(rng.uniform(0.05, 0.6))
    while t < end:
        phones.append(Phone("sil", t, t + gap))
        t += gap
        n_words = int(rng.integers(2, 8))
        words = [sum((_random_syllable(rng) for _ in range(int(rng.choice(3, p=[0.5, 0.35, 0.15])) + 1)), [])
                 for _ in range(n_words)]
        stress = [_stressed_vowel_index(w) for w in words]
        final = [False] * (n_words - 1) + [True]
        for word, durs in zip(words, _durations(words, rate, rng, stress, final)):
            for symbol, d in zip(word, durs):
                phones.append(Phone(symbol, t, t + d))
                t += d
            if rng.uniform() < 0.12:  # an occasional short break between words
                d = float(rng.uniform(0.05, 0.15))
                phones.append(Phone("sil", t, t + d))
                t += d
        gap = float(rng.uniform(0.18, 0.55)) if rng.uniform() > 0.15 else float(rng.uniform(0.8, 1.6))
    phones.append(Phone("sil", t, t + gap))
    return phones


def pad_with_silence(phones: list[Phone], start: float, end: float) -> list[Phone]:
    """Extend a script with silence so it covers [start, end] (text shorter than the clip)."""
    out = list(phones)
    if not out or out[0].start > start:
        out.insert(0, Phone("sil", start, out[0].start if out else end))
    if out[-1].end < end:
        out.append(Phone("sil", out[-1].end, end))
    return out


def clip_phones(phones: list[Phone], start: float, end: float) -> list[Phone]:
    """The part of a script inside [start, end], with phones cut at the edges."""
    out = []
    for p in phones:
        s, e = max(p.start, start), min(p.end, end)
        if e - s > 1e-9:
            out.append(Phone(p.symbol, s, e))
    return out


def phone_ids(phones: list[Phone], n_frames: int, frame_rate: float) -> np.ndarray:
    """int64 [n_frames]: the id of the phone under the centre of frame j, (j + 0.5) / frame_rate.

    Frames that no phone covers are silence. Raises ValueError for an unknown phoneme symbol.
    """
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    if not frame_rate > 0:
        raise ValueError(f"frame_rate must be positive, got {frame_rate}")
    out = np.full(int(n_frames), SIL_ID, dtype=np.int64)
    if not phones or n_frames == 0:
        return out
    ids = np.array([PHONE_INDEX[check_symbol(p.symbol)] for p in phones], dtype=np.int64)
    starts = np.array([p.start for p in phones])
    ends = np.array([p.end for p in phones])
    order = np.argsort(starts, kind="stable")
    ids, starts, ends = ids[order], starts[order], ends[order]
    centres = (np.arange(n_frames) + 0.5) / frame_rate
    k = np.searchsorted(starts, centres, side="right") - 1
    inside = (k >= 0) & (centres < ends[np.clip(k, 0, None)])
    out[inside] = ids[k[inside]]
    return out
