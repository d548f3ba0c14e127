"""`python -m mf.train <stage> [--preset tiny] [...]`: one entry point for every training stage.

Stages and the module that owns each (every module exposes `main(argv: list[str]) -> int`):
  codecs                      mf.train.codecs   (video autoencoder + audio vocoder)
  unimodal, joint, mutual,    mf.train.stages   (generator stages 1-3, `all` runs them in order,
  all, baseline_b,                              and the ablation baselines B, C, E)
  baseline_c, baseline_e, arm
The same command runs under `accelerate launch -m mf.train ...` for data-parallel training.
"""

from __future__ import annotations

import importlib
import sys

STAGE_MODULES = {
    "codecs": "mf.train.codecs",
    "unimodal": "mf.train.stages",
    "joint": "mf.train.stages",
    "mutual": "mf.train.stages",
    "all": "mf.train.stages",
    "baseline_b": "mf.train.stages",
    "baseline_c": "mf.train.stages",
    "baseline_e": "mf.train.stages",
    "arm": "mf.train.stages",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in STAGE_MODULES:
        names = ", ".join(STAGE_MODULES)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"mf.train: unknown stage {argv[0]!r}; choose one of: {names}", file=sys.stderr)
            return 2
        print(f"usage: python -m mf.train <stage> [--preset NAME] [options]\nstages: {names}")
        return 0
    module = importlib.import_module(STAGE_MODULES[argv[0]])
    # Stage modules see their own name first so one module can serve several stages.
    return int(module.main(argv) or 0)


if __name__ == "__main__":
    sys.exit(main())
