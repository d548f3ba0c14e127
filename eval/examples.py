"""Make the example evaluation set the app's Evaluate tab scores with one click.

    python -m eval.examples --out assets/examples [--clips 4] [--seconds 6] [--steps 4]

For each of ``--clips`` held-out seeds (``HELDOUT_SEED_START + i``, never seen in training) it writes
``generated/exNN.mp4`` (the shipped model at ``--steps`` steps, from ``--assets``) and
``reference/exNN.mp4`` (its ground truth: the corpus render of the same character and the same
timed script, ``eval.compare.ground_truth``), paired by file stem as ``eval.score`` pairs them, and
``manifest.json`` (the command, seeds, texts, model checkpoint and the files' sizes). Half the clips
say a sentence, half babble. The set is small (64x64 mp4s, about 0.1 MB per clip) so it ships in
the repository; rerun this command after retraining the model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

from mf.constants import FPS, HELDOUT_SEED_START, SAMPLE_RATE

TEXTS = ("hello, nice to meet you", None, "the weather is lovely today", None)


def _sha1(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha1(fh.read()).hexdigest()


def make_examples(out: str, *, clips: int = 4, seconds: float = 6.0, steps: int = 4, assets: str = "assets",
                  log=print) -> dict:
    """Write the example set into ``out`` (see the module docstring); returns the manifest."""
    import torch

    from eval.compare import ground_truth
    from mf.media import write_mp4
    from mf.pipeline import generate_clip, load_studio

    if clips < 1 or seconds <= 0 or steps < 1:
        raise ValueError(f"need clips >= 1, seconds > 0, steps >= 1; got {clips}, {seconds}, {steps}")
    studio = load_studio(assets=assets)
    if not studio.trained:
        raise ValueError(f"{assets}/model holds no trained checkpoint: an example set of initial weights shows nothing")
    gen_dir, ref_dir = os.path.join(out, "generated"), os.path.join(out, "reference")
    os.makedirs(gen_dir, exist_ok=True)
    os.makedirs(ref_dir, exist_ok=True)
    entries = []
    for i in range(clips):
        seed, text = HELDOUT_SEED_START + i, TEXTS[i % len(TEXTS)]
        with torch.inference_mode():
            frames, audio, _ = generate_clip(studio, steps=steps, seed=seed, seconds=seconds, text=text)
        truth = ground_truth(seed, seconds, text=text, frames_per_chunk=studio.config.frames_per_chunk,
                             size=studio.video_codec.frame_size)
        name = f"ex{i:02d}.mp4"
        gen = write_mp4(os.path.join(gen_dir, name), frames, FPS, audio, SAMPLE_RATE)
        ref = write_mp4(os.path.join(ref_dir, name), truth.frames, FPS, truth.audio, SAMPLE_RATE)
        entries.append({"name": name, "seed": seed, "text": text, "character": int(truth.character.id),
                        "generated_bytes": os.path.getsize(gen), "reference_bytes": os.path.getsize(ref)})
        log(f"{name}: seed {seed}, text {text!r}")
    manifest = {"command": f"python -m eval.examples --out {out} --clips {clips} --seconds {seconds:g} "
                           f"--steps {steps} --assets {assets}",
                "steps": steps, "seconds": seconds, "checkpoint": studio.checkpoint,
                "model_sha1": _sha1(os.path.join(assets, "model", "diffusion_pytorch_model.safetensors")),
                "clips": entries}
    with open(os.path.join(out, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
    return manifest


def example_files(root: str) -> tuple[list[str], list[str]]:
    """(generated mp4 paths, reference mp4 paths) of a set written by ``make_examples``; [] where absent."""
    def listing(sub):
        folder = os.path.join(root, sub)
        return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".mp4")) \
            if os.path.isdir(folder) else []
    return listing("generated"), listing("reference")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.examples", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="assets/examples")
    ap.add_argument("--clips", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--assets", default="assets")
    args = ap.parse_args(argv)
    try:
        make_examples(args.out, clips=args.clips, seconds=args.seconds, steps=args.steps, assets=args.assets)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
