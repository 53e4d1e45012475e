"""Does the lesion become visible as the CT prior improves? Held-out denoising MSE against images seen, and the
clean-image lesion AUROC of image detectors, for CT priors and their training checkpoints.

For each prior (a bundled name, a checkpoint file, or a training run's snapshot ``train_state.*`` — its EMA
weights, i.e. what would ship if training stopped there):

* held-out denoising MSE at σ ∈ {0.05, 0.1, 0.2, 0.5, 1} on the 256 test phantoms of ``prior-phantom-ct-64.md``
  (``healthy_set(256, seed=10_001)``, the same noise draws as ``benchmarks/priors.py``), beside the exact
  denoiser of a Gaussian fitted to 8,000 training phantoms;
* clean images, no measurements (``--detect``): healthy phantoms vs independent lesion phantoms (contrast
  ``--contrast``), n + n, AUROC ± SE of
  - ``denoising-error`` (the registered detector: global error over its default σ levels, fitted on healthy
    phantoms), the most a global image score gets;
  - *local denoising error*: the per-pixel error ``‖D(x + σ z, σ) − x‖²`` averaged over σ ∈ {0.05, 0.1, 0.2},
    pooled to 4-px blocks, z-scored per block on healthy phantoms, max over blocks inside the body;
  - the reference row, *liver-aware local contrast* (liver-only 3 × 3 mean − liver-only 11 × 11 mean, minimum
    over the liver eroded by 1 px): it is given the ground-truth liver mask, which no detector has.
  Nothing here is tuned: the σ levels and the block size were fixed before any run.

    python benchmarks/ct_prior_curve.py --priors phantom-ct-64 runs/snapshots/phantom-ct-64-long-* \\
        --detect phantom-ct-64,runs/snapshots/phantom-ct-64-long-4000 --out benchmarks/results/ct-prior-curve.md
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from pathlib import Path

import torch
from _common import BLOCK, emit, hardware, liver_contrast, load_any, local_error_maps, mse
from torch.nn import functional as F

from priorshift.analytic import fit_gaussian
from priorshift.data import PhantomCT, healthy_set, lesion_set, load_dataset
from priorshift.detectors import DenoisingError
from priorshift.metrics import auroc, auroc_standard_error

CURVE_SIGMAS = (0.05, 0.1, 0.2, 0.5, 1.0)
PRIORS_PY_SEED = {0.05: 0, 0.1: 1, 0.2: 2, 0.5: 3, 1.0: 4}  # priors.py draws level i's noise from seed i


def block_body(body: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(body[:, None].float(), BLOCK)[:, 0] > 0


def detect_rows(den, n: int, contrast: float) -> dict[str, tuple[float, float]]:
    fit = healthy_set(n, seed=10_003)
    healthy = healthy_set(n, seed=10_004)
    lesion = lesion_set(n, seed=10_005, contrast=contrast)
    rows = {}
    det = DenoisingError(den).fit(fit.images, seed=list(range(n)))
    s_id = det.score(healthy.images, seed=list(range(n))).score
    s_ood = det.score(lesion.images, seed=list(range(n))).score
    rows["denoising-error (global)"] = (s_id, s_ood)
    ref = local_error_maps(den, fit.images, 0)
    mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-8)

    def local(ls, seed0):
        z = (local_error_maps(den, ls.images, seed0) - mu) / sd
        return torch.where(block_body(ls.body_masks), z, torch.full_like(z, -float("inf"))).flatten(1).max(1).values

    rows["local denoising error (block max, z on healthy)"] = (local(healthy, 10_000), local(lesion, 20_000))
    return {k: (auroc(a, b), auroc_standard_error(auroc(a, b), n, n)) for k, (a, b) in rows.items()}


def at_size_rows(den, size: int, n: int, label: str) -> list[str]:
    """The patch prior on ``size``-px phantoms with its 64-px-trained network: MSE per σ (as a fraction of σ², the
    noise it removes) beside the same at 64 px, and the seconds per image of one D call at each size."""
    rows = ["", f"## The patch prior `{label}` at {size} × {size} (trained on 64 × 64): MSE / σ² and cost", "",
            "| size | " + " | ".join(f"σ={s:g}" for s in CURVE_SIGMAS) + " | s per image per D call |", "|---:|" + "---:|" * (len(CURVE_SIGMAS) + 1)]
    for s_px, d in ((den.image_size, den), (size, den.at_size(size))):
        x = healthy_set(n, size=s_px, seed=10_001).images
        ratios = [mse(d, x, s, PRIORS_PY_SEED[s]) / s**2 for s in CURVE_SIGMAS]
        b = min(16, x.shape[0])
        t = time.perf_counter()
        with torch.no_grad():
            d(x[:b], torch.full((b,), 0.5))
        rows.append(f"| {s_px} | " + " | ".join(f"{r:.3f}" for r in ratios) + f" | {(time.perf_counter() - t) / b:.4f} |")
        print(rows[-1], flush=True)
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--priors", nargs="+", required=True, help="bundled names, checkpoint files or snapshot directories")
    p.add_argument("--detect", default="", help="comma-separated subset of --priors to run the clean-image detectors on")
    p.add_argument("--n", type=int, default=256, help="held-out images for the MSE")
    p.add_argument("--n-detect", type=int, default=64, help="images per class for the clean-image AUROC")
    p.add_argument("--contrast", type=float, default=-0.15)
    p.add_argument("--fit-n", type=int, default=8000, help="training phantoms for the Gaussian fit (0: skip)")
    p.add_argument("--at-size", type=int, default=0, help="also run the patch priors among --detect at this image size (e.g. 128)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    def order(spec):  # the snapshots of a run in step order
        m = re.search(r"-(\d+)$", spec.rstrip("/"))
        return (re.sub(r"-\d+$", "", spec.rstrip("/")), int(m.group(1)) if m else -1)

    specs = sorted(args.priors, key=order)
    test = healthy_set(args.n, seed=10_001).images
    header = "| prior | backbone | images seen | " + " | ".join(f"MSE σ={s:g}" for s in CURVE_SIGMAS) + " |"
    lines = ["# CT priors: held-out denoising MSE against images seen, and the clean-image lesion AUROC", "",
             f"{args.n} held-out phantoms (`healthy_set(seed=10_001)`, the set of `prior-phantom-ct-64.md`), [-1, 1] units. "
             "Snapshots are the EMA weights of a training run at that step (what would ship if it stopped there); "
             "images seen counts the init prior's training too; a patch prior's \"images\" are crops (16 or 32 px, 5 % whole).", "",
             header, "|---|---|---:|" + "---:|" * len(CURVE_SIGMAS)]
    gauss = None
    if args.fit_n:
        g = fit_gaussian(load_dataset("phantom-ct", split="train", n=args.fit_n, image_size=64).double(), shrinkage=0.02, nugget=1e-5)
        gauss = lambda x, s: g(x.double(), s.double()).float()  # noqa: E731
        lines.append(f"| fitted Gaussian ({args.fit_n} phantoms) | — | — | "
                     + " | ".join(f"{mse(gauss, test, s, PRIORS_PY_SEED[s]):.5f}" for s in CURVE_SIGMAS) + " |")
    results, detect, extra = [], {}, []
    wanted = [d for d in args.detect.split(",") if d]
    for spec in specs:
        den, seen, backbone, label = load_any(spec)
        errs = [mse(den, test, s, PRIORS_PY_SEED[s]) for s in CURVE_SIGMAS]
        results.append({"prior": spec, "label": label, "backbone": backbone, "images_seen": seen, "mse": dict(zip(map(str, CURVE_SIGMAS), errs))})
        lines.append(f"| `{label}` | {backbone} | {seen:,} | " + " | ".join(f"{e:.5f}" for e in errs) + " |")
        print(lines[-1], flush=True)
        if spec in wanted:
            detect[label] = detect_rows(den, args.n_detect, args.contrast)
            print(label, detect[label], flush=True)
            if args.at_size and hasattr(den, "at_size"):
                extra += at_size_rows(den, args.at_size, min(args.n, 64), label)
    if detect:
        n = args.n_detect
        fit_free = PhantomCT(n, 64, 10_004), PhantomCT(n, 64, 10_005)
        livers = [torch.stack([ph.liver_mask for ph in ds]) for ds in fit_free]
        healthy, lesion = healthy_set(n, seed=10_004).images, lesion_set(n, seed=10_005, contrast=args.contrast).images
        a = auroc(liver_contrast(healthy, livers[0]), liver_contrast(lesion, livers[1]))
        energy = auroc(healthy.pow(2).flatten(1).mean(1), lesion.pow(2).flatten(1).mean(1))  # the trivial baseline: no prior
        names = list(next(iter(detect.values())))
        lines += ["", f"## Clean-image lesion AUROC ± SE (contrast {args.contrast:g}, {n} healthy vs {n} lesion phantoms, independent anatomies)", "",
                  "| prior | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for label, rows in detect.items():
            lines.append(f"| `{label}` | " + " | ".join(f"{rows[k][0]:.3f} ± {rows[k][1]:.3f}" for k in names) + " |")
        lines.append(f"| reference: liver-aware local contrast (given the true liver mask) | {a:.3f} ± {auroc_standard_error(a, n, n):.3f} |"
                     + " |" * (len(names) - 1))
        lines.append(f"| trivial baseline: image energy ‖x‖² (no prior, no ground truth) | {energy:.3f} ± {auroc_standard_error(energy, n, n):.3f} |"
                     + " |" * (len(names) - 1))
        for label, rows in detect.items():
            next(r for r in results if r["label"] == label)["clean_auroc"] = {k: v[0] for k, v in rows.items()}
    lines += extra
    lines += ["", f"Hardware: {hardware(args.threads)}; {time.perf_counter() - t0:.0f} s.", "",
              f"Command: `python benchmarks/ct_prior_curve.py {shlex.join(sys.argv[1:])}`"]
    emit(lines, args.out)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
