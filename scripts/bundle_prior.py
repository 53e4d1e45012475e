"""Ship a trained prior: copy RUN/NAME.safetensors + .json into src/priorshift/weights and record it in the
manifest (weights checksum, the prior digest, the exact training command, steps, wall time, hardware, data).

    python scripts/bundle_prior.py /path/to/run/phantom-ct-64.safetensors "CT phantoms, 64×64 (abdomen-like slices)" ["history note"]
    python scripts/bundle_prior.py --digests      # re-record prior_sha256 of every bundled prior (after the rule changed)

The optional third argument records anything the command alone does not say (e.g. a run resumed with a
shortened schedule). The prior digest (``prior_sha256``, :func:`priorshift.diffusion.checkpoint.prior_digest`)
covers the weights and the JSON config; ``load_prior`` refuses a bundled prior whose digest differs from the
manifest's. ``--digests`` only re-records digests of priors whose weights still match the manifest's ``sha256``.
"""

import json
import shutil
import sys
from pathlib import Path

from priorshift.diffusion.checkpoint import DIGEST_KEY, WEIGHTS_DIR, atomic_write_json, load_prior, prior_digest, sha256

manifest_path = WEIGHTS_DIR / "manifest.json"
manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}


def digest_of(name: str) -> str:
    weights = WEIGHTS_DIR / manifest[name]["file"]
    if sha256(weights) != manifest[name]["sha256"]:
        sys.exit(f"{weights}: the weights differ from the manifest's sha256; not re-recording its digest")
    return prior_digest(json.loads(weights.with_suffix(".json").read_text()), manifest[name]["sha256"])


if sys.argv[1:] == ["--digests"]:
    for name in manifest:
        manifest[name][DIGEST_KEY] = digest_of(name)
        load_prior(name)  # loads against the digest just recorded (atomic write below only if all load)
    atomic_write_json(manifest_path, manifest)
    for name in manifest:
        print(f"{name}: {DIGEST_KEY} {manifest[name][DIGEST_KEY]}")
    sys.exit(0)

src = Path(sys.argv[1])
description = sys.argv[2]
note = sys.argv[3] if len(sys.argv) > 3 else None
config = json.loads(src.with_suffix(".json").read_text())
name = config["name"]
D = load_prior(src)  # refuse to ship something that does not load (any registered backbone)
WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
for suffix in (".safetensors", ".json"):
    shutil.copyfile(src.with_suffix(suffix), WEIGHTS_DIR / f"{name}{suffix}")
training = config["training"]
manifest[name] = {
    "file": f"{name}.safetensors",
    "sha256": sha256(WEIGHTS_DIR / f"{name}.safetensors"),
    "size_bytes": (WEIGHTS_DIR / f"{name}.safetensors").stat().st_size,
    "description": description,
    "command": config["command"],
    "dataset": config["dataset"],
    "image_size": D.image_size,
    "parameters": None,
    "steps": training["steps"],
    "batch_size": training["batch_size"],
    "wall_time_s": training["wall_time_s"],
    "images_per_s": training["images_per_s"],
    "hardware": training["hardware"],
    **({"init": config["init"]} if "init" in config else {}),
    **({"note": note} if note else {}),
}
manifest[name][DIGEST_KEY] = digest_of(name)
D = load_prior(WEIGHTS_DIR / f"{name}.safetensors")
manifest[name]["parameters"] = sum(p.numel() for p in D.net.parameters())
atomic_write_json(manifest_path, manifest)
load_prior(name)  # the manifest's digest holds
print(json.dumps(manifest[name], indent=2))
