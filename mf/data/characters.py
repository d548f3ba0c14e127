"""Character identities of the corpus: a cartoon look and a matching voice, from an integer id.

Owns: ``Character`` (frozen, only the id is stored; every trait is derived from it on demand with
a seeded generator, so ``character(7)`` is the same person on every machine), the attribute
vector that serves as the character's "caption" for the model (``Character.attributes()``,
float32 in [-1, 1], layout in ``ATTRIBUTE_NAMES``) and a short human description.

Design choices:
* Looks and voices are drawn from continuous distributions (colours, proportions, pitch, formant
  scale...), plus a few categorical traits (hair style, glasses, background pattern), so any two
  ids differ; the test suite checks 10^4 ids give 10^4 distinct attribute vectors.
* Voice and look are tied by one latent "register" r in [0, 1]: a low register gives a lower f0,
  a longer vocal tract (smaller formant scale) and a slightly broader head. This makes the voice
  predictable from the picture, as in real people, and so learnable by the model.
* Skin colours are natural tones for most characters and saturated "cartoon" colours for about a
  third of them (teal, violet ...), which keeps identities easy to tell apart at 64x64.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

HAIR_STYLES: tuple[str, ...] = ("bald", "short", "long", "spiky", "bun", "curly", "fringe")
BACKGROUND_PATTERNS: tuple[str, ...] = ("plain", "stripes", "dots")

# Attribute layout: every entry is mapped into [-1, 1]. Colours are RGB in [0, 1] -> 2x - 1.
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "skin_r", "skin_g", "skin_b",
    "head_width", "head_aspect", "head_squareness", "chin_taper",
    "eye_size", "eye_spacing", "iris_r", "iris_g", "iris_b",
    *(f"hair_{s}" for s in HAIR_STYLES),
    "hair_r", "hair_g", "hair_b",
    "shirt_r", "shirt_g", "shirt_b",
    "background_r", "background_g", "background_b",
    *(f"background_{p}" for p in BACKGROUND_PATTERNS),
    "mouth_width", "glasses",
    "voice_f0", "voice_formant_scale", "voice_breathiness", "voice_rate", "voice_pitch_range",
)
CHARACTER_ATTR_DIM: int = len(ATTRIBUTE_NAMES)

# Salt mixed into the id so a character's generator differs from a clip's generator of equal value.
_CHARACTER_SALT = 0x43484152  # "CHAR"
MAX_CHARACTER_ID = 2**63 - 1


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)))


def _unit(x: float, lo: float, hi: float) -> float:
    """Map x in [lo, hi] to [-1, 1]."""
    return float(np.clip(2.0 * (x - lo) / (hi - lo) - 1.0, -1.0, 1.0))


@dataclass(frozen=True)
class Look:
    """Everything the face renderer needs; sizes are fractions of the frame's half-width."""

    skin: tuple[float, float, float]
    head_width: float        # half-width of the head, 0.40 .. 0.54
    head_aspect: float       # half-height / half-width, 1.0 .. 1.3
    head_squareness: float   # superellipse exponent, 2 (ellipse) .. 3.6 (boxy)
    chin_taper: float        # 0 .. 0.35: how much the lower head narrows
    eye_size: float          # eye half-height relative to head height
    eye_spacing: float       # eye centre distance from head centre, relative to head width
    iris: tuple[float, float, float]
    hair_style: str
    hair: tuple[float, float, float]
    shirt: tuple[float, float, float]
    background: tuple[float, float, float]
    background_pattern: str
    mouth_width: float       # neutral mouth half-width relative to head width
    lips: tuple[float, float, float]
    glasses: bool


@dataclass(frozen=True)
class Voice:
    """Source-filter parameters of a character's voice."""

    f0: float                # mean fundamental frequency, Hz
    formant_scale: float     # multiplies the reference (adult male) formants
    breathiness: float       # 0 .. 1: aspiration noise mixed into the glottal source
    rate: float              # speaking-rate factor (1 = reference durations)
    pitch_range: float       # intonation excursion factor
    jitter: float            # relative period-to-period f0 perturbation
    shimmer: float           # relative period-to-period amplitude perturbation
    loudness: float          # output gain


@dataclass(frozen=True)
class Character:
    """A corpus character: a look and a matching voice, fully determined by ``id``."""

    id: int

    def __post_init__(self):
        if isinstance(self.id, bool) or not isinstance(self.id, (int, np.integer)):
            raise TypeError(f"character id must be an integer, got {type(self.id).__name__}")
        if not 0 <= int(self.id) <= MAX_CHARACTER_ID:
            raise ValueError(f"character id must be in [0, 2**63 - 1], got {self.id}")
        object.__setattr__(self, "id", int(self.id))

    @cached_property
    def _traits(self) -> tuple[Look, Voice]:
        rng = np.random.default_rng(np.random.SeedSequence([self.id, _CHARACTER_SALT]))
        register = float(rng.uniform())  # 0 = low, big voice ... 1 = high, small voice

        if rng.uniform() < 0.66:  # natural skin tone
            skin = _hsv(rng.uniform(0.03, 0.11), rng.uniform(0.25, 0.6), rng.uniform(0.42, 0.97))
        else:  # cartoon colour
            skin = _hsv(rng.uniform(), rng.uniform(0.35, 0.75), rng.uniform(0.6, 0.95))
        hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
        hair_palette = rng.uniform()
        if hair_palette < 0.6:  # natural: black .. brown .. blond .. grey
            hair = _hsv(rng.uniform(0.05, 0.12), rng.uniform(0.2, 0.8), rng.uniform(0.08, 0.85))
        else:
            hair = _hsv(rng.uniform(), rng.uniform(0.5, 0.95), rng.uniform(0.35, 0.95))
        iris = _hsv(rng.uniform(), rng.uniform(0.4, 0.9), rng.uniform(0.25, 0.7))
        shirt = _hsv(rng.uniform(), rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.95))
        background = _hsv(rng.uniform(), rng.uniform(0.1, 0.6), rng.uniform(0.55, 0.98))
        lips = _hsv(rng.uniform(0.95, 1.02), rng.uniform(0.35, 0.65), rng.uniform(0.45, 0.75))
        look = Look(
            skin=skin,
            head_width=float(rng.uniform(0.40, 0.50) + 0.04 * (1 - register)),
            head_aspect=float(rng.uniform(1.0, 1.3)),
            head_squareness=float(rng.uniform(2.0, 3.6)),
            chin_taper=float(rng.uniform(0.0, 0.35)),
            eye_size=float(rng.uniform(0.09, 0.15)),
            eye_spacing=float(rng.uniform(0.32, 0.48)),
            iris=iris,
            hair_style=hair_style,
            hair=hair,
            shirt=shirt,
            background=background,
            background_pattern=BACKGROUND_PATTERNS[int(rng.choice(3, p=[0.6, 0.2, 0.2]))],
            mouth_width=float(rng.uniform(0.26, 0.38)),
            lips=lips,
            glasses=bool(rng.uniform() < 0.18),
        )
        f0 = math.exp(math.log(85.0) + register * (math.log(250.0) - math.log(85.0))
                      + rng.normal(0.0, 0.06))
        voice = Voice(
            f0=float(np.clip(f0, 75.0, 290.0)),
            formant_scale=float(np.clip(0.9 + 0.3 * register + rng.normal(0.0, 0.03), 0.85, 1.25)),
            breathiness=float(rng.uniform(0.02, 0.35)),
            rate=float(rng.uniform(0.85, 1.2)),
            pitch_range=float(rng.uniform(0.6, 1.4)),
            jitter=float(rng.uniform(0.004, 0.012)),
            shimmer=float(rng.uniform(0.03, 0.08)),
            loudness=float(rng.uniform(0.75, 1.0)),
        )
        return look, voice

    @property
    def look(self) -> Look:
        return self._traits[0]

    @property
    def voice(self) -> Voice:
        return self._traits[1]

    def attributes(self) -> np.ndarray:
        """float32 [CHARACTER_ATTR_DIM] in [-1, 1], in the order of ``ATTRIBUTE_NAMES``."""
        look, voice = self.look, self.voice
        rgb = lambda c: [2.0 * x - 1.0 for x in c]  # noqa: E731
        values = [
            *rgb(look.skin),
            _unit(look.head_width, 0.40, 0.54), _unit(look.head_aspect, 1.0, 1.3),
            _unit(look.head_squareness, 2.0, 3.6), _unit(look.chin_taper, 0.0, 0.35),
            _unit(look.eye_size, 0.09, 0.15), _unit(look.eye_spacing, 0.32, 0.48), *rgb(look.iris),
            *[1.0 if look.hair_style == s else -1.0 for s in HAIR_STYLES],
            *rgb(look.hair), *rgb(look.shirt), *rgb(look.background),
            *[1.0 if look.background_pattern == p else -1.0 for p in BACKGROUND_PATTERNS],
            _unit(look.mouth_width, 0.26, 0.38), 1.0 if look.glasses else -1.0,
            _unit(math.log(voice.f0), math.log(75.0), math.log(290.0)),
            _unit(voice.formant_scale, 0.85, 1.25), _unit(voice.breathiness, 0.02, 0.35),
            _unit(voice.rate, 0.85, 1.2), _unit(voice.pitch_range, 0.6, 1.4),
        ]
        out = np.asarray(values, dtype=np.float32)
        assert out.shape == (CHARACTER_ATTR_DIM,)
        return out

    def describe(self) -> str:
        """A short caption, e.g. 'round teal head, short brown hair, glasses, low voice'."""
        look, voice = self.look, self.voice
        shape = ("round" if look.head_squareness < 2.5 else "boxy" if look.head_squareness > 3.1
                 else "oval")
        if look.head_aspect > 1.2:
            shape = "long " + shape
        hair = "bald" if look.hair_style == "bald" else f"{look.hair_style} {_colour_name(look.hair)} hair"
        pitch = "low" if voice.f0 < 120 else "high" if voice.f0 > 185 else "medium"
        speed = "fast" if voice.rate > 1.1 else "slow" if voice.rate < 0.93 else ""
        parts = [f"{shape} {_colour_name(look.skin)} head", hair,
                 f"{_colour_name(look.shirt)} shirt"]
        if look.glasses:
            parts.append("glasses")
        parts.append(f"{pitch} {speed + ' ' if speed else ''}voice".replace("  ", " "))
        return ", ".join(parts)


def _colour_name(rgb: tuple[float, float, float]) -> str:
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    if v < 0.2:
        return "black"
    if s < 0.15:
        return "white" if v > 0.85 else "grey"
    if 0.02 <= h < 0.12 and s < 0.75 and v < 0.9:
        return "brown" if v < 0.62 else "tan"
    names = ((0.04, "red"), (0.11, "orange"), (0.19, "yellow"), (0.42, "green"), (0.53, "teal"),
             (0.70, "blue"), (0.80, "violet"), (0.93, "pink"), (1.01, "red"))
    for edge, name in names:
        if h < edge:
            return name
    return "red"


def character(id: int) -> Character:  # noqa: A002 - the contract names the argument `id`
    """The corpus character with this integer id (>= 0)."""
    return Character(id)
