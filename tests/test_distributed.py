"""Scale-out scoring (``priorshift.distributed``, ``score --distributed``): sharding, merge, resume.

The multi-process tests start 2 gloo ranks on loopback with torchrun, running this file as the worker script
(``python tests/test_distributed.py api|cli ...``, see the bottom). Fault injection lives only here: the worker
wraps ``score_shard`` so that one rank ``os._exit``s after its first recorded batch, and logs the ids each rank
scored, so the tests can check that a re-run scores no finished sample again.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from priorshift import distributed as D
from priorshift.detectors import score_batches
from priorshift.types import Scores

HERE = Path(__file__).resolve()
TIMEOUT = 120  # seconds per torchrun launch


# -- helpers ------------------------------------------------------------------------------------------
class SeedDetector:
    """A stand-in detector: each image's score, map and extra are functions of its seed alone (cheap)."""

    input_kind = "images"

    def __init__(self):
        self.calls = []

    def score(self, data, *, seed, hooks=()):
        seeds = torch.tensor(seed, dtype=torch.float64)
        self.calls.append(len(seed))
        return Scores(score=seeds / 7, map=seeds[:, None, None].expand(-1, 2, 2).float(), nfe=3 * len(seed),
                      extras={"kl_nats": seeds * 2, "curve": torch.zeros(len(seed), 5), "block": 4})


def _api_problem(n: int = 5):
    """KLIP's contract example (an 8×8 Gaussian prior under inpainting) and n measurements."""
    from priorshift.registry import get

    det = get("detector", "klip").example()
    x = det.prior.sample(n, generator=torch.Generator().manual_seed(1))
    return det, det.operator(x, seed=list(range(n)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "--monitor-interval", "0.1", str(HERE), *map(str, args)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    if sys.platform == "linux":
        full_env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only, whatever the host name resolves to
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=full_env)


def _scored_ids(log_dir: Path, tag: str) -> list[int]:
    return [i for p in sorted(log_dir.glob(f"{tag}_rank*.json")) for i in json.loads(p.read_text())]


def _recorded_ids(work: Path, n: int) -> set[int]:
    return {i for shard in D.read_shards(work, n).values() for i in shard["records"]}


# -- sharding -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, world", [(1, 1), (5, 2), (6, 2), (7, 3), (2, 4), (10, 4)])
def test_shard_indices_pad_like_distributed_sampler(n, world):
    from torch.utils.data import DistributedSampler

    shards = [D.shard_indices(n, r, world) for r in range(world)]
    for r, ids in enumerate(shards):
        assert ids == list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False))
        assert len(ids) == -(-n // world), "every rank gets ceil(n / world) ids"
    flat = [i for ids in shards for i in ids]
    assert set(flat) == set(range(n)) and len(flat) - n == (-n) % world, "the padding wraps around"


@pytest.mark.parametrize("n, world, b", [(5, 2, 2), (10, 3, 4), (3, 4, 2), (16, 2, 16)])
def test_shard_batches_are_the_single_process_batches(n, world, b):
    single = [list(range(s, min(s + b, n))) for s in range(0, n, b)]
    shards = [D.shard_batches(n, r, world, b) for r in range(world)]
    assert all(len(s) == -(-len(single) // world) for s in shards)
    assert all(batch in single for s in shards for batch in s)
    assert {tuple(batch) for s in shards for batch in s} == {tuple(batch) for batch in single}
    assert all(D.shard_indices(n, r, world, b) == [i for batch in shards[r] for i in batch] for r in range(world))
    with pytest.raises(ValueError, match="rank"):
        D.shard_batches(n, world, world, b)


# -- score_shard and merge, ranks run one after the other in this process -----------------------------
def test_shards_merge_to_the_single_process_result_bit_for_bit(tmp_path):
    det, y = _api_problem(5)
    ref = score_batches(det, y, batch_size=2, seed=3)
    for rank in (1, 0):  # rank 1's padding batch (ids 0, 1) is scored by it first; rank 0 then skips that batch
        D.score_shard(det, y, work_dir=tmp_path, seed=3, batch_size=2, rank=rank, world=2, keep=("reconstruction",), keep_first=3)
    s = D.merge(tmp_path, 5).to_scores()
    assert torch.equal(s.score, ref.score) and torch.equal(s.map, ref.map) and torch.equal(s.extras["seeds"], ref.extras["seeds"])
    assert torch.equal(s.extras["kl_nats"], ref.extras["kl_nats"]) and torch.equal(s.extras["reconstruction"], ref.extras["reconstruction"][:3])
    assert s.nfe == ref.nfe and isinstance(s.nfe, int) and s.extras["nfe_per_image"] == ref.extras["nfe_per_image"]


def test_score_shard_resumes_and_never_rescores(tmp_path):
    det = SeedDetector()
    x = torch.zeros(7, 1, 4, 4)
    first = D.score_shard(det, x, work_dir=tmp_path, seed=10, batch_size=2, rank=0, world=2)
    assert first == [0, 1, 4, 5]
    # A re-run with another world size: only what nobody recorded is scored.
    det.calls.clear()
    rest = [i for r in range(3) for i in D.score_shard(det, x, work_dir=tmp_path, seed=10, batch_size=2, rank=r, world=3)]
    assert sorted(rest) == [2, 3, 6] and sum(det.calls) == 3
    m = D.merge(tmp_path, 7)
    assert m.seed.tolist() == list(range(10, 17)) and torch.equal(m.score, m.seed.double() / 7)
    assert m.nfe.tolist() == [3.0] * 7 and m.nfe_total == 21 and list(m.extras) == ["kl_nats"] and m.map.shape == (7, 2, 2)
    with pytest.raises(ValueError, match="seed 10, but this run gives it seed 0"):
        D.score_shard(det, x, work_dir=tmp_path, seed=0, batch_size=2, rank=0, world=2)
    with pytest.raises(ValueError, match="run of 7 samples, not 8"):
        D.score_shard(det, torch.zeros(8, 1, 4, 4), work_dir=tmp_path, seed=10, batch_size=2, rank=0, world=2)


def test_merge_errors(tmp_path):
    det = SeedDetector()
    x = torch.zeros(6, 1, 4, 4)
    with pytest.raises(ValueError, match="no shard files"):
        D.merge(tmp_path, 6)
    D.score_shard(det, x, work_dir=tmp_path, seed=0, batch_size=2, rank=0, world=2)
    with pytest.raises(ValueError, match=r"2 of 6 samples have no score .*ids 2, 3\).*re-run the same command"):
        D.merge(tmp_path, 6)
    D.score_shard(det, x, work_dir=tmp_path, seed=0, batch_size=2, rank=1, world=2)
    # An identical duplicate (what DistributedSampler's padding produces) is fine ...
    shard = json.loads((tmp_path / "rank0.json").read_text())
    (tmp_path / "rank5.json").write_text(json.dumps({**shard, "records": {"1": shard["records"]["1"]}}))
    with np.load(tmp_path / "rank0_maps.npz") as z:
        np.savez(tmp_path / "rank5_maps.npz", **{"map/1": z["map/1"]})
    assert torch.equal(D.merge(tmp_path, 6).score, torch.arange(6, dtype=torch.float64) / 7)
    # ... a differing one is an error naming the id.
    shard["records"]["1"]["score"] += 1e-12
    (tmp_path / "rank5.json").write_text(json.dumps({**shard, "records": {"1": shard["records"]["1"]}}))
    with pytest.raises(ValueError, match=r"sample 1 is recorded twice with different results \(score: rank0.json vs rank5.json"):
        D.merge(tmp_path, 6)


def test_prepare_work_dir(tmp_path):
    work = tmp_path / "out.partial"
    assert D.work_dir_for(tmp_path / "out") == work
    assert D.prepare_work_dir(work, {"seed": 0, "n": 4}) is False and (work / "config.json").exists()
    (work / "rank0.json").write_text("{}")
    assert D.prepare_work_dir(work, {"n": 4, "seed": 0}) is True, "the same config resumes"
    with pytest.raises(ValueError, match=r"other settings \(seed differ\).*--overwrite"):
        D.prepare_work_dir(work, {"n": 4, "seed": 1})
    assert (work / "rank0.json").exists(), "a refused run changes nothing"
    assert D.prepare_work_dir(work, {"n": 4, "seed": 1}, overwrite=True) is False and not (work / "rank0.json").exists()


def test_distributed_outside_torchrun_is_refused(tmp_path, monkeypatch, capsys):
    from priorshift.cli import main

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    assert main(["score", "--distributed", "--prior", "nope", "--operator", "ct", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "torchrun --nproc-per-node N -m priorshift score" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.partial").exists()


# -- the CLI: a tiny trained prior --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 16×16 prior trained for 3 steps by ``priorshift train``, 6 images, and the score arguments for them."""
    from priorshift.cli import main

    tmp = tmp_path_factory.mktemp("dist")
    imgs = (np.random.default_rng(0).random((20, 1, 16, 16)) * 255).astype(np.uint8)
    np.save(tmp / "imgs.npy", imgs)
    np.save(tmp / "six.npy", imgs[:6])
    assert main(["train", "--data", f"npy:{tmp / 'imgs.npy'}", "--image-size", "16", "--steps", "3", "--batch-size", "4", "--widths", "8,16",
                 "--out", str(tmp / "run"), "--quiet", "--no-grid"]) == 0
    args = ["score", "--prior", str(tmp / "run" / "run.safetensors"), "--images", str(tmp / "six.npy"), "--operator", "blur:kernel=5,sigma=1,noise=0.05",
            "--plan", "steps=4", "--param", "window=0,1", "--param", "block=4", "--param", "samples=2", "--batch-size", "1", "--seed", "5",
            "--threads", "1"]
    return tmp, args


def _outputs(out: Path) -> tuple:
    config = json.loads((out / "config.json").read_text())
    config.pop("seconds")
    return (out / "scores.csv").read_text(), np.load(out / "maps.npy"), config


def test_cli_world_of_one_in_process(tiny, tmp_path, monkeypatch, capsys):
    """``--distributed`` with a 1-rank group in this process: same outputs as a plain run; a foreign work
    directory is refused unless --overwrite."""
    from priorshift.cli import main

    _, args = tiny
    assert main([*args, "--out", str(tmp_path / "single"), "--quiet"]) == 0
    for var, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}.items():
        monkeypatch.setenv(var, value)
    out = tmp_path / "dist"
    work = D.work_dir_for(out)
    D.prepare_work_dir(work, {"seed": 99})
    (work / "rank0.json").write_text("{}")
    assert main([*args, "--out", str(out), "--quiet", "--distributed"]) == 2
    assert "other settings" in capsys.readouterr().err and not out.exists() and (work / "rank0.json").exists()
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    assert main([*args, "--out", str(out), "--quiet", "--distributed", "--overwrite"]) == 0
    assert not work.exists(), "the work directory is removed once merged"
    single, dist = _outputs(tmp_path / "single"), _outputs(out)
    assert single[0] == dist[0] and np.array_equal(single[1], dist[1]) and single[2] == dist[2]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in (tmp_path / "single").iterdir())


# -- two processes under torchrun ---------------------------------------------------------------------
@pytest.mark.slow
def test_two_ranks_api_equal_single_process(tmp_path):
    det, y = _api_problem(5)
    ref = score_batches(det, y, batch_size=2, seed=3)
    r = _torchrun("api", tmp_path / "work", tmp_path / "log", "run1")
    assert r.returncode == 0, r.stderr[-3000:]
    s = D.merge(tmp_path / "work", 5).to_scores()
    assert torch.equal(s.score, ref.score) and torch.equal(s.map, ref.map) and torch.equal(s.extras["kl_nats"], ref.extras["kl_nats"])
    assert torch.equal(s.extras["seeds"], ref.extras["seeds"]) and s.nfe == ref.nfe
    scored = _scored_ids(tmp_path / "log", "run1")
    assert set(scored) == set(range(5)) and len(scored) <= 5 + 2, "at most the padding batch twice"


@pytest.mark.slow
def test_two_ranks_cli_killed_rank_resumes_to_the_single_process_outputs(tiny, tmp_path):
    from priorshift.cli import main

    _, args = tiny
    assert main([*args, "--out", str(tmp_path / "single"), "--quiet"]) == 0
    out, log = tmp_path / "dist", tmp_path / "log"
    work = D.work_dir_for(out)
    cli = [*args, "--out", out, "--distributed"]
    # Run 1: rank 1 dies after its first batch; torchrun stops rank 0 too. Nothing reaches --out.
    r = _torchrun("cli", log, "run1", *cli, env={"PRIORSHIFT_TEST_KILL_RANK": "1"})
    assert r.returncode != 0, r.stderr[-3000:]
    assert not out.exists() and work.is_dir()
    done = _recorded_ids(work, 6)
    assert 1 in done and len(done) < 6, f"rank 1 recorded its first batch and the run stopped short: {sorted(done)}"
    # Run 2, the same command: resumes, scores only what was missing, and merges into --out.
    r = _torchrun("cli", log, "run2", *cli)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming the unfinished run" in r.stderr and "rank 1/2: scored" in r.stderr
    rescored = _scored_ids(log, "run2")
    assert not set(rescored) & done, f"finished samples scored again: {sorted(set(rescored) & done)}"
    assert sorted(rescored) == sorted(set(range(6)) - done), "each missing sample scored once"
    assert not work.exists()
    single, dist = _outputs(tmp_path / "single"), _outputs(out)
    assert single[0] == dist[0], "scores.csv"
    assert np.array_equal(single[1], dist[1]) and single[2] == dist[2], "maps.npy and config.json"
    assert (out / "heatmaps.png").exists()


# -- the worker: this file run by torchrun ------------------------------------------------------------
def _worker(argv: list[str]) -> int:
    """``api WORK LOG TAG``: score the API problem's shard; ``cli LOG TAG ARGS...``: run ``priorshift`` ARGS.
    Each rank logs the ids it scored to ``LOG/TAG_rank{r}.json``; with ``PRIORSHIFT_TEST_KILL_RANK=r``, rank r
    exits hard after its first recorded batch (fault injection, read only here)."""
    torch.set_num_threads(1)
    mode, rest = argv[0], argv[1:]
    rank = int(os.environ["RANK"])
    kill = os.environ.get("PRIORSHIFT_TEST_KILL_RANK") == str(rank)
    real = D.score_shard

    def score_shard(*a, progress=None, **kw):
        def progress_(done, total):
            if progress is not None:
                progress(done, total)
            if kill:
                os._exit(3)

        ids = real(*a, progress=progress_, **kw)
        log.mkdir(parents=True, exist_ok=True)
        (log / f"{tag}_rank{rank}.json").write_text(json.dumps(ids))
        return ids

    D.score_shard = score_shard
    if mode == "api":
        work, log, tag = Path(rest[0]), Path(rest[1]), rest[2]
        rank_, world = D.init()
        det, y = _api_problem(5)
        D.score_shard(det, y, work_dir=work, seed=3, batch_size=2, rank=rank_, world=world)
        D.barrier()
        D.close()
        return 0
    from priorshift.cli import main

    log, tag = Path(rest[0]), rest[1]
    return main(rest[2:])


if __name__ == "__main__":
    raise SystemExit(_worker(sys.argv[1:]))
