"""Calibrated decisions (priorshift.calibrate): do conformal p-values keep their stated false-alarm rate on real
data, and what power do they leave each detector?

Fashion-MNIST (ID) vs MNIST (OOD) through the ``fmnist-blur`` task (7×7 Gaussian blur, σ_y = 0.02), prior
``fashion-mnist-32``. For each detector:

* **False alarms** on held-out ID items at α ∈ {0.01, 0.05, 0.1}, against the central 95 % interval of
  Binomial(n_test, α) / n_test — one fixed, pre-declared split — and the mean over R random re-splits of the same
  items (the conformal guarantee is marginal over the calibration draw: the mean is ≤ α up to Monte-Carlo error).
* **Power** at α = 0.05 (MNIST digits flagged) beside the AUROC (ID test vs OOD).
* **BH**: mean false-discovery proportion and power over ``--repeats`` (2000) mixed batches (80 ID + 20 OOD), each with its own
  random calibration/test re-split, at q = 0.05 and 0.1.

Detectors and splits (all Fashion-MNIST *test* images; measurement noise of image i from seed 10,000 + i):

* ``measurement-norm`` (zero NFE), through :class:`priorshift.calibrate.Conformal` itself: fitted on [0, 1000),
  calibrated on [1000, 9000) (n = 8000), tested on [9000, 10000); OOD = the 1000 MNIST test digits.
* KLIP (the task's dataset-level window and block) and multiscale KLIP (5 equal windows, 8-px blocks, its
  ``KLIPMultiscale`` recipe) from one sampler trace per image (ΠGDM, 50 steps, S = 2, the full schedule, every
  step's 2-px block map kept): ID [0, 800) — multiscale fit [0, 100), calibration [100, 500) (KLIP, which needs no
  fit, calibrates on [0, 500)), test [500, 800); OOD = MNIST test [0, 200). Also KLIP's map (the task's image-level
  window and 2-px blocks): the family-wise block p-values' error on ID test maps (any block flagged).

Scores are cached in ``--out``/scores.npz (read by ``benchmarks/calibration_monitor.py``), traces in ``--out``/traces.

    python benchmarks/calibration.py --out benchmarks/results/calibration
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats

sys.path.insert(0, str(Path(__file__).parent))
from _common import fmt, hardware, write_results  # noqa: E402

from priorshift import load_prior  # noqa: E402
from priorshift.bench.klip_eval import Setting, load_or_score, multiscale_scores  # noqa: E402
from priorshift.calibrate import Conformal, block_pvalues, conformal_pvalues, flag_pvalues  # noqa: E402
from priorshift.data import fashion_mnist, load_dataset  # noqa: E402
from priorshift.detectors import MeasurementNorm  # noqa: E402
from priorshift.detectors.klip import image_score  # noqa: E402
from priorshift.detectors.klip_multiscale import DEFAULT_BLOCK, DEFAULT_WINDOWS, equal_windows  # noqa: E402
from priorshift.metrics import ood_metrics  # noqa: E402
from priorshift.tasks import get_task  # noqa: E402

ALPHAS = (0.01, 0.05, 0.1)
TASK = get_task("fmnist-blur")


def measure(op, x, first_seed):
    return op(x, seed=list(range(first_seed, first_seed + x.shape[0])))


def binomial_interval(n: int, alpha: float) -> tuple[float, float]:
    lo, hi = stats.binom.interval(0.95, n, alpha)
    return lo / n, hi / n


def false_alarm_rows(name, p_test, resplit_fa, n_cal, n_test) -> tuple[list[str], dict]:
    rows, data = [], {}
    for a in ALPHAS:
        fa = float((p_test <= a).double().mean())
        lo, hi = binomial_interval(n_test, a)
        mean = float(np.mean([f[a] for f in resplit_fa]))
        inside = lo <= fa <= hi
        rows.append(f"| {name} | {n_cal} | {n_test} | {a} | {fmt(fa)} | [{fmt(lo)}, {fmt(hi)}] | {'yes' if inside else '**no**'} | {fmt(mean, 4)} |")
        data[str(a)] = {"false_alarm": fa, "interval": [lo, hi], "inside": inside, "resplit_mean": mean}
    return rows, data


def bh_rows(name, batches) -> tuple[list[str], dict]:
    """``batches``: list of (p-values (100,), is_ood (100,)) — each from its own re-split."""
    rows, data = [], {}
    for q in (0.05, 0.1):
        fdp, power = [], []
        for p, ood in batches:
            f = flag_pvalues(p, q, "bh")
            fdp.append(float((f & ~ood).sum()) / max(int(f.sum()), 1))
            power.append(float((f & ood).sum()) / int(ood.sum()))
        rows.append(f"| {name} | {len(batches)} | {q} | {fmt(float(np.mean(fdp)), 4)} | {fmt(float(np.mean(power)))} |")
        data[str(q)] = {"mean_fdp": float(np.mean(fdp)), "mean_power": float(np.mean(power)), "batches": len(batches)}
    return rows, data


def resplit(pool_scores, n_cal, n_test, repeats, rng, ood_scores=None, score_fn=None):
    """Random re-splits of an ID pool: (false-alarm rates per α, BH batches of 80 ID + 20 OOD). ``score_fn(perm)``
    returns (calibration, test, ood) scores for a permutation when the detector is refitted per split."""
    fas, batches = [], []
    n = pool_scores.shape[0] if score_fn is None else None
    for r in range(repeats):
        perm = torch.from_numpy(rng.permutation(n if n is not None else score_fn.n))
        if score_fn is None:
            cal, test, ood = pool_scores[perm[:n_cal]], pool_scores[perm[n_cal:n_cal + n_test]], ood_scores
        else:
            cal, test, ood = score_fn(perm)
        p = conformal_pvalues(cal, test)
        fas.append({a: float((p <= a).double().mean()) for a in ALPHAS})
        idx_id = torch.from_numpy(rng.choice(test.shape[0], 80, replace=False))
        idx_ood = torch.from_numpy(rng.choice(ood.shape[0], 20, replace=False))
        pb = conformal_pvalues(cal, torch.cat([test[idx_id], ood[idx_ood]]))
        batches.append((pb, torch.cat([torch.zeros(80, dtype=torch.bool), torch.ones(20, dtype=torch.bool)])))
    return fas, batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/calibration")
    ap.add_argument("--repeats", type=int, default=2000, help="random re-splits (and BH batches) per detector")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    t_start = time.perf_counter()
    prior, op = load_prior(TASK.prior), TASK.make_operator()
    fm = fashion_mnist("test")  # 10,000 garments
    y_all = measure(op, fm, 10_000)
    digits = load_dataset("mnist", split="test")  # 1,000 digits
    y_ood = measure(op, digits, 20_000)
    rng = np.random.default_rng(0)
    table, results, scores = [], {}, {}

    # -- measurement-norm through Conformal: fit [0, 1000), calibrate [1000, 9000), test [9000, 10000) --
    conf = Conformal(MeasurementNorm(prior, op), fit_size=1000, batch_size=1000).fit(y_all[:9000])
    d_test, d_ood = conf.decide(y_all[9000:], alpha=0.05), conf.decide(y_ood, alpha=0.05)
    mn_pool = conf.detector.score(y_all[1000:]).score  # the 9000 non-fit ID items: for re-splits
    fas, batches = resplit(mn_pool, 8000, 1000, args.repeats, rng, ood_scores=d_ood.score)
    results["measurement-norm"] = {"n_calibration": conf.n_, "n_test": 1000, "n_ood": y_ood.shape[0], "nfe": 0,
                                   "auroc": ood_metrics(d_test.score.numpy(), d_ood.score.numpy())["auroc"],
                                   "power_0.05": float(d_ood.flagged.double().mean())}
    table.append(("measurement-norm", d_test.pvalue, fas, batches, conf.n_, 1000))
    scores["measurement-norm"] = {"fit": None, "pool": mn_pool, "ood": d_ood.score}

    # -- KLIP and multiscale KLIP from one trace per image --
    n_id, n_ood = 800, 200
    kw = dict(plan=dict(TASK.plan), samples=TASK.samples, base_block=2, batch_size=args.batch_size)
    key = f"fmnist-blur {TASK.plan} S={TASK.samples} base_block=2"
    traces = {name: load_or_score(out / "traces" / f"{name}.safetensors", prior, op, y, seed=list(range(s0, s0 + y.shape[0])), key=f"{key} {name}",
                                  progress=lambda d, t, name=name: print(f"\r  {name} {d}/{t} ({time.perf_counter() - t_start:.0f}s)", end="",
                                                                         file=sys.stderr, flush=True), **kw)
              for name, y, s0 in (("id", y_all[:n_id], 30_000), ("ood", y_ood[:n_ood], 40_000))}
    print(file=sys.stderr)
    ds = Setting(**TASK.klip_settings["dataset"])
    k_id, k_ood = image_score(ds.maps(traces["id"])), image_score(ds.maps(traces["ood"]))
    fas, batches = resplit(k_id, 500, 300, args.repeats, rng, ood_scores=k_ood)
    p_test = conformal_pvalues(k_id[:500], k_id[500:])
    p_ood = conformal_pvalues(k_id[:500], k_ood)
    nfe_window = traces["id"].nfe_per_image_full * ds.steps(traces["id"].n_steps)[1] / traces["id"].n_steps
    results[f"KLIP ({ds.label()})"] = {"n_calibration": 500, "n_test": 300, "n_ood": n_ood, "nfe": nfe_window,
                                       "auroc": ood_metrics(k_id[500:].numpy(), k_ood.numpy())["auroc"], "power_0.05": float((p_ood <= 0.05).double().mean())}
    table.append((f"KLIP ({ds.label()})", p_test, fas, batches, 500, 300))
    scores["klip"] = {"fit": None, "pool": k_id, "ood": k_ood}

    windows = equal_windows(DEFAULT_WINDOWS)
    id_tr, ood_tr = traces["id"].pooled(DEFAULT_BLOCK), traces["ood"].pooled(DEFAULT_BLOCK)

    class MultiscaleSplit:  # refit the multiscale z-scores on each split's first 100 items
        n = n_id

        def __call__(self, perm):
            s = multiscale_scores(id_tr.take(perm[:100]), {"cal": id_tr.take(perm[100:500]), "test": id_tr.take(perm[500:800]), "ood": ood_tr},
                                  windows=windows, block=DEFAULT_BLOCK)
            return s["cal"], s["test"], s["ood"]

    fixed = MultiscaleSplit()(torch.arange(n_id))
    fas, batches = resplit(None, 400, 300, args.repeats, rng, score_fn=MultiscaleSplit())
    p_test, p_ood = conformal_pvalues(fixed[0], fixed[1]), conformal_pvalues(fixed[0], fixed[2])
    name = f"KLIP multiscale ({DEFAULT_WINDOWS} windows, {DEFAULT_BLOCK} px)"
    results[name] = {"n_calibration": 400, "n_fit": 100, "n_test": 300, "n_ood": n_ood, "nfe": id_tr.nfe_per_image_full,
                     "auroc": ood_metrics(fixed[1].numpy(), fixed[2].numpy())["auroc"], "power_0.05": float((p_ood <= 0.05).double().mean())}
    table.append((name, p_test, fas, batches, 400, 300))
    scores["klip-multiscale"] = {"fit": None, "pool": torch.cat(fixed[:2]), "ood": fixed[2]}

    # -- KLIP's map: family-wise block p-values (any block of an ID test map flagged) --
    im = Setting(**TASK.klip_settings["image"])
    m_id, m_ood = im.maps(traces["id"]), im.maps(traces["ood"])
    bp_test, bp_ood = block_pvalues(m_id[:500], m_id[500:]), block_pvalues(m_id[:500], m_ood)
    fwer = {a: float((bp_test.flatten(1).amin(1) <= a).double().mean()) for a in ALPHAS}
    blocks = {a: float((bp_ood <= a).flatten(1).sum(1).double().mean()) for a in ALPHAS}

    # -- tables --
    lines = [f"# Calibrated decisions: conformal p-values on Fashion-MNIST (ID) vs MNIST (OOD), {TASK.description}", "",
             f"Prior {TASK.prior}; {hardware(args.threads)}; {time.perf_counter() - t_start:.0f} s for this table; the sampler traces "
             f"it reads (cached in {out / 'traces'}) took {sum(t.seconds for t in traces.values()):.0f} s to make. Splits and seeds: the script's docstring.", "",
             "## False alarms on held-out ID items", "",
             "p = (1 + #{calibration scores ≥ s}) / (n + 1), flagged when p ≤ α. 'interval': the central 95 % interval of Binomial(n_test, α) / n_test "
             f"for the fixed split; 'mean over re-splits': {args.repeats} random calibration/test re-splits of the same ID items (and a refit of "
             "multiscale KLIP's z-scores on each split's fit items).", "",
             "| detector | n calibration | n test | α | false-alarm rate | 95 % binomial interval | inside | mean over re-splits |",
             "|---|---:|---:|---:|---:|---|---|---:|"]
    for name, p, fas, _, n_cal, n_test in table:
        rows, data = false_alarm_rows(name, p, fas, n_cal, n_test)
        lines += rows
        results[name]["false_alarms"] = data
    lines += ["", "## Power at α = 0.05 beside the AUROC", "", "| detector | AUROC (ID test vs OOD) | OOD flagged at α = 0.05 | n OOD | smallest p 1/(n+1) | NFE / image |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        lines.append(f"| {name} | {fmt(r['auroc'])} | {fmt(r['power_0.05'])} | {r['n_ood']} | {fmt(1 / (r['n_calibration'] + 1), 4)} | {r['nfe']:.0f} |")
    lines += ["", "## Benjamini–Hochberg over mixed batches (80 ID + 20 OOD, each batch its own random re-split)", "",
              "BH's bound here is q · 80/100 (conformal p-values sharing a calibration set are PRDS). Mean power 0: the detector's OOD "
              "p-values are seldom small enough for BH (p ≤ q · k / 100), so it flags nothing — a weak detector gets no discoveries.", "",
              "| detector | batches | q | mean FDP | mean power |", "|---|---:|---:|---:|---:|"]
    for name, _, _, batches, _, _ in table:
        rows, data = bh_rows(name, batches)
        lines += rows
        results[name]["bh"] = data
    lines += ["", f"## KLIP's map ({im.label()}): family-wise block p-values (max-statistic), calibration n = 500, 300 ID test maps", "",
              "| α | ID test maps with any block flagged (FWER) | 95 % binomial interval | mean flagged blocks per OOD map |", "|---:|---:|---|---:|"]
    for a in ALPHAS:
        lo, hi = binomial_interval(300, a)
        lines.append(f"| {a} | {fmt(fwer[a])} | [{fmt(lo)}, {fmt(hi)}] | {blocks[a]:.2f} of {m_ood[0].numel()} |")
    results["klip_map"] = {"setting": im.label(), "fwer": fwer, "ood_blocks_flagged": blocks}
    lines += ["", f"Command: `python benchmarks/calibration.py --out {args.out} --repeats {args.repeats} --threads {args.threads}`"]
    write_results(out, "results", lines, results)
    np.savez(out / "scores.npz", **{f"{d}__{k}": v.numpy() for d, s in scores.items() for k, v in s.items() if v is not None})


if __name__ == "__main__":
    main()
