"""The ablation arms A-F as data: one factor changes between neighbours (issue 13, the paper's factor table).

    python -m mf.train arm --arm C --init runs/joint/ema --steps 600      # one arm
    python -m mf.train arm --arm all --init runs/joint/ema --steps 600    # A, C, D, E, F (B = A's weights)

| arm | history during training | objective                                      | sampled at          |
|-----|-------------------------|------------------------------------------------|---------------------|
| A   | real (teacher forcing)  | flow matching only (no ShortCut term)          | 50 steps, d = 0     |
| B   | = A's weights           | —                                              | 4 Euler steps, d = 0 (naive) |
| C   | real (teacher forcing)  | flow matching + ShortCut                       | 4 (shortcut mode)   |
| D   | self-rolled (few-step)  | flow matching + ShortCut                       | 4                   |
| E   | self-rolled             | DMD, frozen teacher (Self-Forcing)             | 4                   |
| F   | self-rolled             | FM + ShortCut + DMD, online multi-step teacher | 4, 8 and 50         |

Neighbours differ in ONE column (``FACTORS``): A->B sampler, B->C objective (the ShortCut term, which
is what lets the 4-step sampler tell the network its jump), C->D history, D->E objective, E->F
objective. Every trained arm starts from the same stage-2 weights (``--init``), sees the same latent
set, the same batch size and the same number of optimizer steps (``--steps``, never wall time), and
runs stage 3's code path (``mf.train.mutual_forcing``: the pipeline's rolling cache, horizons up to
``max_history``); ``history="real"`` writes the real chunks into that cache instead of a rollout.

Shipped layout (read by ``python -m eval.ablation``), one folder per arm:
    assets/arms/<arm>/config.json               MFTransformer config (save_pretrained)
    assets/arms/<arm>/diffusion_pytorch_model.safetensors   EMA weights in float16
    assets/arms/<arm>/arm.json                  {"arm", "history", "objective", "sampling", "weights_of",
                                                 "training": the run summary (steps, batch, init, ...)}
B's folder holds a copy of A's weights with B's arm.json (so each arm is one self-contained folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, replace
from pathlib import Path

from mf.train.mutual_forcing import MutualForcingConfig

ARMS_DIR = Path("assets/arms")
# objective name -> the MutualForcingConfig fields it sets (all others stay at their defaults)
OBJECTIVES = {
    "fm": dict(w_fm=1.0, w_shortcut=0.0, w_dmd=0.0, teacher="online"),
    "fm+shortcut": dict(w_fm=1.0, w_shortcut=2.0 / 3.0, w_dmd=0.0, teacher="online"),
    "dmd-frozen": dict(w_fm=0.0, w_shortcut=0.0, w_dmd=1.0, teacher="frozen"),
    "mutual": dict(w_fm=1.0, w_shortcut=2.0 / 3.0, w_dmd=1.0 / 3.0, teacher="online"),
}


@dataclass(frozen=True)
class Arm:
    name: str
    history: str                 # "real" | "generated" (None for B: it is not trained)
    objective: str               # key of OBJECTIVES (A's for B)
    sampling: tuple              # ((steps, sampler mode), ...): mode "multi" = d = 0 Euler, "few" = shortcut jumps
    weights_of: str              # the arm whose training produces these weights (itself, or "A" for B)

    @property
    def trained(self) -> bool:
        return self.weights_of == self.name

    def config(self, **overrides) -> MutualForcingConfig:
        """The stage-3 config this arm trains with; ``overrides`` (max_history, rollout_steps, ...) are the
        run's shared settings and must be the same for every arm."""
        return replace(MutualForcingConfig(history=self.history, **OBJECTIVES[self.objective]), **overrides)

    def columns(self) -> dict:
        """The table's three factor columns. The sampler column is the step count: whether the sampler tells
        the network its jump (d > 0) follows from the objective (only a ShortCut/DMD-trained model has a
        few-step mode), so B (fm, d = 0) -> C (fm + ShortCut, d > 0) is one change, of the objective."""
        return {"history": self.history, "objective": self.objective, "sampler": self.sampling[0][0]}


ARMS = {
    "A": Arm("A", "real", "fm", ((50, "multi"),), "A"),
    "B": Arm("B", "real", "fm", ((4, "multi"),), "A"),
    "C": Arm("C", "real", "fm+shortcut", ((4, "few"),), "C"),
    "D": Arm("D", "generated", "fm+shortcut", ((4, "few"),), "D"),
    "E": Arm("E", "generated", "dmd-frozen", ((4, "few"),), "E"),
    "F": Arm("F", "generated", "mutual", ((4, "few"), (8, "few"), (50, "multi")), "F"),
}
ORDER = tuple(ARMS)
# The one column each neighbour pair changes (the test asserts it against ARMS).
FACTORS = {("A", "B"): "sampler", ("B", "C"): "objective", ("C", "D"): "history", ("D", "E"): "objective",
           ("E", "F"): "objective"}


def get_arm(name: str) -> Arm:
    key = str(name).upper()
    if key not in ARMS:
        raise ValueError(f"unknown arm {name!r}; choose one of {', '.join(ORDER)} or 'all'")
    return ARMS[key]


def changed_columns(a: Arm, b: Arm) -> set[str]:
    ca, cb = a.columns(), b.columns()
    return {k for k in ca if ca[k] != cb[k]}


def arm_meta(arm: Arm, training: dict | None) -> dict:
    return {"arm": arm.name, "history": arm.history, "objective": arm.objective,
            "sampling": [list(s) for s in arm.sampling], "weights_of": arm.weights_of, "training": training or {}}


def export_arm(model, out: Path, arm: Arm, training: dict | None) -> Path:
    """Save ``model`` as float16 safetensors + config.json + arm.json into ``out`` (the shipped layout)."""
    import copy

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(model).to(torch.float16)
    half.save_pretrained(str(out), safe_serialization=True)
    (out / "arm.json").write_text(json.dumps(arm_meta(arm, training), indent=2, default=str) + "\n")
    return out


def read_arm(folder: Path) -> dict:
    """arm.json of a shipped arm folder (ValueError naming the arm when it is absent or unreadable)."""
    path = Path(folder) / "arm.json"
    if not (Path(folder) / "config.json").is_file() or not path.is_file():
        raise FileNotFoundError(f"arm {Path(folder).name}: no config.json + arm.json in its folder")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"arm {Path(folder).name}: arm.json is not valid JSON ({exc})") from None


def train_arms(args, latents, names: list[str], *, run_stage, budget_for, log) -> list[dict]:
    """Train the arms ``names`` in order from ``args.init`` with the same steps / batch / data; export each
    to ``<args.arms_dir>/<arm>/``. B is not trained: it is A's exported weights under B's arm.json, so
    A is trained first when B is asked for and A's folder does not exist yet."""
    import shutil

    arms = [get_arm(n) for n in names]
    out_root = Path(args.arms_dir)
    if (any(not a.trained for a in arms) and "A" not in [a.name for a in arms]
            and not (out_root / "A" / "config.json").is_file()):
        arms.insert(0, ARMS["A"])
    summaries = []
    for arm in arms:
        dest = out_root / arm.name
        if not arm.trained:
            if int(os.environ.get("RANK", "0")) != 0:  # under accelerate only rank 0 writes (it exported A)
                continue
            src = out_root / arm.weights_of
            if not (src / "config.json").is_file():
                raise FileNotFoundError(f"arm {arm.name} needs arm {arm.weights_of}'s weights; train it first")
            dest.mkdir(parents=True, exist_ok=True)
            for f in src.iterdir():
                if f.name != "arm.json":
                    shutil.copy2(f, dest / f.name)
            training = json.loads((src / "arm.json").read_text()).get("training", {})
            (dest / "arm.json").write_text(json.dumps(arm_meta(arm, training), indent=2, default=str) + "\n")
            log(f"arm {arm.name}: weights of arm {arm.weights_of} -> {dest}")
            summaries.append({"arm": arm.name, "weights_of": arm.weights_of})
            continue
        arm_args = type(args)(**{**vars(args), "arm": arm.name})
        summary = run_stage("arm", arm_args, latents, budget=budget_for(), export=None)  # exports to dest
        summaries.append(summary)
    return summaries


__all__ = ["ARMS", "ARMS_DIR", "Arm", "FACTORS", "OBJECTIVES", "ORDER", "arm_meta", "changed_columns",
           "export_arm", "get_arm", "read_arm", "train_arms"]
