"""The phoneme inventory of the corpus and the phonetic facts attached to each phoneme.

Owns: PHONEMES (stable ids, the model embeds them), each phoneme's class (vowel, plosive, ...),
its viseme (mouth shape) and its acoustic targets (formants, frication band, burst band, voicing).
The text front end, the voice synthesiser and the face renderer all read these tables, so a
phoneme means the same thing to the ear and to the eye.

Formant targets are adult-male reference values (Hz, after Peterson & Barney style averages);
each character's voice multiplies them by its formant scale.
"""

from __future__ import annotations

from dataclasses import dataclass

# Index 0 is silence; index 1 "unk" marks frames whose phoneme is unknown (real, untranscribed
# footage), so the model can tell "nobody speaks" from "we don't know what is said".
PHONEMES: tuple[str, ...] = (
    "sil", "unk",
    # vowels and diphthongs
    "aa", "ae", "ah", "eh", "er", "ih", "iy", "ao", "uh", "uw", "ay", "aw", "ey", "ow", "oy",
    # plosives
    "p", "b", "t", "d", "k", "g",
    # affricates
    "ch", "jh",
    # fricatives
    "f", "v", "th", "dh", "s", "z", "sh", "zh", "hh",
    # nasals
    "m", "n", "ng",
    # approximants
    "l", "r", "w", "y",
)
N_PHONEMES: int = len(PHONEMES)
PHONE_INDEX: dict[str, int] = {p: i for i, p in enumerate(PHONEMES)}
SIL_ID = 0
UNK_ID = 1

VOWELS = frozenset("aa ae ah eh er ih iy ao uh uw ay aw ey ow oy".split())
PLOSIVES = frozenset("p b t d k g".split())
AFFRICATES = frozenset("ch jh".split())
FRICATIVES = frozenset("f v th dh s z sh zh hh".split())
NASALS = frozenset("m n ng".split())
APPROXIMANTS = frozenset("l r w y".split())


# ---------------------------------------------------------------------------------------------
# Visemes: the mouth shape a phoneme shows. open = jaw opening (0..1), width = lip spread
# relative to the character's neutral mouth width, teeth / tongue = visibility (0..1).
@dataclass(frozen=True)
class Viseme:
    name: str
    open: float
    width: float
    teeth: float
    tongue: float


VISEMES: dict[str, Viseme] = {v.name: v for v in (
    Viseme("rest", 0.0, 1.00, 0.0, 0.0),     # silence: lips together, relaxed
    Viseme("closed", 0.0, 0.90, 0.0, 0.0),   # p b m: lips pressed
    Viseme("open", 1.00, 1.05, 0.3, 0.3),    # aa ae ah ay aw: jaw wide open
    Viseme("mid", 0.60, 1.05, 0.5, 0.2),     # eh er: half open
    Viseme("spread", 0.35, 1.25, 1.0, 0.0),  # iy ih ey y: lips spread, teeth showing
    Viseme("round", 0.50, 0.60, 0.0, 0.0),   # uw ow ao oy uh w: rounded, protruded
    Viseme("teeth", 0.22, 1.00, 1.0, 0.0),   # f v: upper teeth on the lower lip
    Viseme("tongue", 0.30, 1.00, 0.8, 1.0),  # th dh: tongue between the teeth
    Viseme("narrow", 0.25, 1.05, 1.0, 0.2),  # t d n l s z k g ng hh: small gap, teeth
    Viseme("pucker", 0.35, 0.72, 0.8, 0.0),  # sh zh ch jh r: protruded, teeth behind
)}
VISEME_NAMES: tuple[str, ...] = tuple(VISEMES)

PHONE_VISEME: dict[str, str] = {
    "sil": "rest", "unk": "rest",
    "aa": "open", "ae": "open", "ah": "open", "ay": "open", "aw": "open",
    "eh": "mid", "er": "mid", "hh": "mid",
    "iy": "spread", "ih": "spread", "ey": "spread", "y": "spread",
    "uw": "round", "ow": "round", "ao": "round", "oy": "round", "uh": "round", "w": "round",
    "p": "closed", "b": "closed", "m": "closed",
    "f": "teeth", "v": "teeth",
    "th": "tongue", "dh": "tongue",
    "t": "narrow", "d": "narrow", "n": "narrow", "l": "narrow", "s": "narrow", "z": "narrow",
    "k": "narrow", "g": "narrow", "ng": "narrow",
    "sh": "pucker", "zh": "pucker", "ch": "pucker", "jh": "pucker", "r": "pucker",
}

# ---------------------------------------------------------------------------------------------
# Acoustic targets. Formants (F1, F2, F3) in Hz; a diphthong glides from its first to its
# second target over its duration.
FORMANTS: dict[str, tuple[tuple[float, float, float], ...]] = {
    "iy": ((270, 2290, 3010),), "ih": ((390, 1990, 2550),), "eh": ((530, 1840, 2480),),
    "ae": ((660, 1720, 2410),), "aa": ((730, 1090, 2440),), "ah": ((600, 1170, 2390),),
    "ao": ((570, 840, 2410),), "uh": ((440, 1020, 2240),), "uw": ((300, 870, 2240),),
    "er": ((490, 1350, 1690),),
    "ay": ((730, 1090, 2440), (300, 2200, 2950)), "aw": ((730, 1090, 2440), (320, 900, 2250)),
    "ey": ((500, 1850, 2480), (300, 2250, 2950)), "ow": ((560, 900, 2400), (320, 860, 2250)),
    "oy": ((570, 840, 2410), (300, 2200, 2950)),
    "m": ((280, 1000, 2200),), "n": ((280, 1450, 2500),), "ng": ((280, 1900, 2600),),
    "l": ((360, 1250, 2700),), "r": ((420, 1250, 1600),), "w": ((300, 650, 2200),),
    "y": ((270, 2100, 3000),),
    # consonant loci: where the formants point during closures and frication
    "p": ((300, 900, 2200),), "b": ((300, 900, 2200),), "f": ((350, 1100, 2300),),
    "v": ((350, 1100, 2300),), "t": ((350, 1700, 2600),), "d": ((350, 1700, 2600),),
    "th": ((400, 1400, 2600),), "dh": ((400, 1400, 2600),), "s": ((400, 1700, 2600),),
    "z": ((400, 1700, 2600),), "sh": ((400, 1900, 2500),), "zh": ((400, 1900, 2500),),
    "ch": ((400, 1900, 2500),), "jh": ((400, 1900, 2500),), "k": ((350, 1900, 2500),),
    "g": ((350, 1900, 2500),), "hh": ((500, 1500, 2500),),
    "sil": ((500, 1500, 2500),), "unk": ((500, 1500, 2500),),
}

# Frication noise band (low, high) in Hz and relative level, for fricatives and affricates.
FRICATION: dict[str, tuple[float, float, float]] = {
    "s": (4200, 7600, 0.55), "z": (4200, 7600, 0.35), "sh": (2100, 5200, 0.55),
    "zh": (2100, 5200, 0.35), "ch": (2100, 5600, 0.5), "jh": (2100, 5600, 0.35),
    "f": (1200, 7600, 0.16), "v": (1200, 7600, 0.10), "th": (1500, 7600, 0.14),
    "dh": (1500, 7600, 0.09),
}
# Plosive release burst band (low, high) in Hz and relative level.
BURST: dict[str, tuple[float, float, float]] = {
    "p": (400, 2000, 0.55), "b": (400, 2000, 0.35), "t": (3000, 7000, 0.6),
    "d": (3000, 7000, 0.4), "k": (1400, 3400, 0.6), "g": (1400, 3400, 0.4),
    "ch": (2100, 5600, 0.5), "jh": (2100, 5600, 0.35),
}
# Relative voicing amplitude of voiced sounds (vowels = 1).
VOICING_LEVEL: dict[str, float] = {
    **{v: 1.0 for v in VOWELS}, "l": 0.6, "r": 0.6, "w": 0.6, "y": 0.6,
    "m": 0.35, "n": 0.35, "ng": 0.35, "v": 0.3, "z": 0.3, "zh": 0.3, "dh": 0.3,
    "b": 0.12, "d": 0.12, "g": 0.12, "jh": 0.15,
}
