"""Multi-process training (torch.distributed + torchrun, gloo on the CPU, 2 processes).

(a) one optimizer step under DDP equals one single-process step on the same global batch (float64, tolerance
    from an error model); (b) a 2-process run killed with SIGKILL and resumed ends with the metrics of an
    uninterrupted 2-process run; (c) the impulse fit runs on rank 0 only and every rank holds bit-identical Q, K;
    plus: a rank-0 refusal ends every rank, the batch split, and the entry points under torchrun.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from impulse_attn.training import TrainConfig, load_checkpoint, train
from impulse_attn.training import factory
from impulse_attn.training.distributed import GlobalBatches
from impulse_attn.training.loop import epoch_seed
from impulse_attn.training.metrics import read_metrics

from conftest import scores

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TINY = dict(dataset="synthetic", synthetic_test=20, synthetic_classes=2, image_size=16, patch_size=2, dim=32,
            depth=1, num_heads=4, head_dim=8, mlp_dim=64, kernel_size=3, batch_size=16, lr=3e-3, progress=False,
            device="cpu")
TIMM = dict(TINY, model="timm:vit_tiny_patch16_224", head_dim=None, dim=64, mlp_dim=128, kernel_size=None)
# (a): global batch 16 of n images: 8 + 8 per rank; 3 images: 2 + 1; 1 image: 1 + a stand-in of weight 0
STEP_SIZES = (16, 3, 1)

DRIVER = r'''
import json, sys, warnings
import torch
warnings.simplefilter("ignore", RuntimeWarning)
torch.set_num_threads(1)
import impulse_attn.fitting as fitting
from impulse_attn.training import TrainConfig, train, factory, distributed
from impulse_attn.training.data import build_datasets

out, spec = sys.argv[1], json.loads(sys.argv[2])
dist = distributed.setup("cpu")
report = {"rank": dist.rank, "world": dist.world}

# (c) the fit runs on rank 0 only; every rank ends with rank 0's Q, K
calls = [0]
real_fit = fitting.fit_impulse
def counting(*a, **k):
    calls[0] += 1
    return real_fit(*a, **k)
fitting.fit_impulse = counting
for name, kw in spec["builds"].items():
    cfg = TrainConfig(**kw)
    data = build_datasets(cfg)
    torch.manual_seed(cfg.seed)
    calls[0] = 0
    model, init = factory.build_model_synced(cfg, data.num_classes, data.image_size, data.channels, dist)
    if hasattr(model, "attention_layers"):
        qk = [layer.to_qk.weight.detach().clone() for layer in model.attention_layers()]
        scales = [layer.scale for layer in model.attention_layers()]
        offsets = [layer.impulse_offsets.clone() for layer in model.attention_layers()]
    else:
        d = model.embed_dim
        qk = [blk.attn.qkv.weight[:2 * d].detach().clone() for blk in model.blocks]
        scales, offsets = [float(blk.attn.scale) for blk in model.blocks], None
    torch.save({"qk": qk, "pos": getattr(model, "pos_embed", torch.zeros(1)).detach().clone(),
                "offsets": offsets}, f"{out}/{name}-rank{dist.rank}.pt")
    report[name] = {"fits": calls[0], "sha": init["weights_sha256"], "scales": scales}
fitting.fit_impulse = real_fit

# a difference between ranks is caught
with torch.no_grad():
    if dist.rank == 1:
        next(model.parameters()).view(-1)[0] += 1e-6
try:
    dist.check_identical(model)
    report["mismatch_caught"] = False
except RuntimeError as e:
    report["mismatch_caught"] = "differ between ranks" in str(e)

# (a) one optimizer step of the real loop, in float64
real_build = factory.build_model
def double(*a, **k):
    m, rec = real_build(*a, **k)
    return m.double(), rec
factory.build_model = double
for kw in spec["steps"]:
    train(TrainConfig(**kw), log=lambda s: None)
factory.build_model = real_build
json.dump(report, open(f"{out}/report-rank{dist.rank}.json", "w"))
'''


pytestmark = pytest.mark.usefixtures("one_thread")


def _torchrun(args, timeout=120, **kw):
    return subprocess.run([*TORCHRUN, *args], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout,
                          **kw)


# --- the batch split (no processes) ---------------------------------------------------------------------------
def test_global_batches_split_the_one_process_batches():
    n, b = 37, 8
    one = GlobalBatches(n, b)
    one.set_epoch_seed(epoch_seed(3, 2))
    whole = list(one)
    assert [len(x) for x in whole] == [8, 8, 8, 8, 5] and sorted(sum(whole, [])) == list(range(n))
    for world in (2, 3):
        shards = [GlobalBatches(n, b, rank, world) for rank in range(world)]
        for s in shards:
            s.set_epoch_seed(epoch_seed(3, 2))
        parts = [list(s) for s in shards]
        for step, batch in enumerate(whole):  # every global batch is split, nothing repeated or padded
            got = [parts[r][step] for r in range(world)]
            counts = [shards[r].steps[step][0] for r in range(world)]
            assert sorted(sum((g[:c] for g, c in zip(got, counts)), [])) == sorted(batch)
            assert all(shards[r].steps[step][1] == len(batch) for r in range(world))
    tiny = GlobalBatches(1, 16, rank=1, world=2)        # a share that is empty: one stand-in sample, weight 0
    tiny.set_epoch_seed(0)
    assert list(tiny) == [[0]] and tiny.steps == [(0, 1)]


def test_weights_digest_covers_every_parameter_and_buffer():
    from impulse_attn.models import ConvMixer
    from impulse_attn.training.distributed import weights_digest
    torch.manual_seed(0)
    a = ConvMixer(image_size=16, patch_size=2, num_classes=2, dim=16, depth=1, kernel_size=3)
    torch.manual_seed(0)
    b = ConvMixer(image_size=16, patch_size=2, num_classes=2, dim=16, depth=1, kernel_size=3)
    assert weights_digest(a) == weights_digest(b)
    bn = next(m for m in b.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.num_batches_tracked += 1                                       # a 0-dim integer buffer counts too
    assert weights_digest(a) != weights_digest(b)


def test_one_process_data_order_is_the_loop_of_earlier_versions():
    # Earlier versions iterated DataLoader(shuffle=True, generator seeded per epoch) through tqdm.auto, whose
    # constructor opens the loader once more: the same order must come out of GlobalBatches.
    from tqdm.auto import tqdm
    for epoch in (1, 2):
        g = torch.Generator()
        g.manual_seed(epoch_seed(0, epoch))
        old = [x.tolist() for x in tqdm(DataLoader(range(50), batch_size=16, shuffle=True, generator=g),
                                        disable=True)]
        new = GlobalBatches(50, 16)
        new.set_epoch_seed(epoch_seed(0, epoch))
        assert list(new) == old


# --- (a) and (c): one torchrun launch ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def driver_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    script = root / "driver.py"
    script.write_text(DRIVER)
    steps = [dict(TINY, synthetic_train=n, steps=1, out=str(root / f"ddp-{n}")) for n in STEP_SIZES]
    spec = {"builds": {"vit": dict(TINY, synthetic_train=16), "timm": dict(TIMM, synthetic_train=16)},
            "steps": steps}
    t0 = time.monotonic()
    r = _torchrun([str(script), str(root), json.dumps(spec)])
    assert r.returncode == 0, r.stderr[-3000:]
    reports = [json.loads((root / f"report-rank{k}.json").read_text()) for k in (0, 1)]
    return root, reports, time.monotonic() - t0


@pytest.mark.parametrize("name", ["vit", "timm"])
def test_fit_runs_on_rank_0_and_every_rank_holds_the_same_qk(driver_run, name):
    root, reports, _ = driver_run
    assert [r[name]["fits"] for r in reports] == [1, 0]              # the fit ran once, on rank 0
    a, b = (torch.load(root / f"{name}-rank{k}.pt", weights_only=True) for k in (0, 1))
    for qa, qb in zip(a["qk"], b["qk"]):                              # bit-identical fitted Q, K
        assert qa.dtype == qb.dtype and torch.equal(qa.view(torch.uint8), qb.view(torch.uint8))
    assert torch.equal(a["pos"], b["pos"])                            # timm: the scaled position embedding too
    if a["offsets"] is not None:
        assert all(torch.equal(x, y) for x, y in zip(a["offsets"], b["offsets"]))
    assert reports[0][name]["scales"] == reports[1][name]["scales"]
    assert reports[0][name]["sha"] == reports[1][name]["sha"]         # the loop's own SHA-256 check agreed
    assert all(r["mismatch_caught"] for r in reports)                 # and it does catch a difference


@pytest.mark.parametrize("n", STEP_SIZES)
def test_one_ddp_step_equals_one_single_process_step(driver_run, tmp_path, monkeypatch, n):
    """Error model: in float64 both runs compute the same per-sample terms; only the order of the gradient sums
    differs (two halves added by the all-reduce vs one sum), a relative error of a few units of float64
    round-off (u = 1.1e-16) of |g| summed over the ≤ 16 samples. Adam's first step moves each parameter by
    lr·g/(|g| + ε), whose sensitivity to g is at most 1/ε (ε = 1e-8), so |Δθ| ≤ lr·|Δg|/ε. With per-sample
    gradient terms below 1 (cross-entropy of a tiny net), |Δg| ≲ 16·4u ≈ 7e-15 and |Δθ| ≲ lr·7e-7: the bound
    used is lr·1e-5."""
    root, _, _ = driver_run
    real_build = factory.build_model

    def double(*a, **k):
        m, rec = real_build(*a, **k)
        return m.double(), rec
    monkeypatch.setattr(factory, "build_model", double)
    single = train(TrainConfig(**dict(TINY, synthetic_train=n, steps=1, out=str(tmp_path / "one"))),
                   log=lambda s: None)
    ddp = load_checkpoint(root / f"ddp-{n}" / "checkpoint.pt")
    one = load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    lr = TINY["lr"]
    assert set(ddp["model"]) == set(one["model"])
    worst = max(float((ddp["model"][k].double() - one["model"][k].double()).abs().max()) for k in one["model"])
    assert all(v.dtype == torch.float64 for v in one["model"].values() if v.is_floating_point())
    assert worst <= lr * 1e-5, f"max parameter difference {worst:.3g} > lr·1e-5"
    moved = max(float((one["model"][k] - load_state_at_init(k, ddp)).abs().max()) for k in ["head.weight"])
    assert moved > lr / 2                                             # the step did move the weights
    h_ddp, h_one = ddp["history"], single.history
    assert h_ddp[1]["step"] == h_one[1]["step"] == 1
    assert h_ddp[1]["train_acc"] == h_one[1]["train_acc"]
    # the loop accumulates the epoch's training loss in float32 (as it always has): agreement to float32 round-off
    assert h_ddp[1]["train_loss"] == pytest.approx(h_one[1]["train_loss"], rel=1e-6)
    assert h_ddp[0]["test_acc"] == h_one[0]["test_acc"]
    assert h_ddp[0]["test_loss"] == pytest.approx(h_one[0]["test_loss"], rel=1e-12)


def load_state_at_init(key, ckpt):
    """The weight before the step: rebuilt as the loop builds it (seeded), in float64."""
    from impulse_attn.training import build_model
    cfg = TrainConfig.from_dict(ckpt["config"])
    torch.manual_seed(cfg.seed)
    model, _ = build_model(cfg, 2, 16)
    return model.double().state_dict()[key]


# --- (b) SIGKILL and resume -------------------------------------------------------------------------------------
FLAGS = ["--dataset", "synthetic", "--synthetic-train", "720", "--synthetic-test", "40", "--synthetic-classes", "2",
         "--image-size", "16", "--patch-size", "2", "--dim", "32", "--depth", "1", "--num-heads", "4",
         "--head-dim", "8", "--mlp-dim", "64", "--kernel-size", "3", "--epochs", "4", "--batch-size", "8",
         "--lr", "3e-3", "--warmup-epochs", "0.5", "--device", "cpu", "--no-progress"]


def _entry_point():
    """The installed `impulse-attn` script when there is one (torchrun runs it with --no-python), else the
    module."""
    script = shutil.which("impulse-attn", path=str(Path(sys.executable).parent))
    return ["--no-python", script] if script else ["-m", "impulse_attn.cli"]


def _descendants(pid: int) -> list:
    """Every process below ``pid`` (from /proc): torch.distributed.run starts its workers in new sessions, so a
    process-group kill would leave them running."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def test_two_process_run_killed_and_resumed_matches_uninterrupted(tmp_path):
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*TORCHRUN, *_entry_point(), "train", *FLAGS, "--out", str(killed)], cwd=REPO,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    metrics = killed / "metrics.jsonl"
    start = time.monotonic()
    while not ((killed / "checkpoint.pt").exists() and len(read_metrics(metrics)) >= 2):
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with {proc.returncode}: {proc.stderr.read()[-2000:]}")
        assert time.monotonic() - start < 120, "timed out waiting for the first checkpoint"
        time.sleep(0.02)
    family = [proc.pid, *_descendants(proc.pid)]                      # torchrun and its workers (own sessions)
    assert len(family) >= 3, family
    for pid in family:
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    time.sleep(0.5)                                                   # nothing writes any more
    done = [r["epoch"] for r in read_metrics(metrics)]
    assert done[-1] < 4, f"the run was not killed mid-way: {done}"
    state = load_checkpoint(killed / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2

    resumed = _torchrun(["-m", "impulse_attn", "train", *FLAGS, "--out", str(killed), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    straight = _torchrun(["-m", "impulse_attn.cli", "train", *FLAGS, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-3000:]
    a, b = read_metrics(metrics), read_metrics(tmp_path / "straight" / "metrics.jsonl")
    assert [r["epoch"] for r in a] == [0, 1, 2, 3, 4]
    assert scores(a) == scores(b)
    torch.testing.assert_close(load_checkpoint(killed / "checkpoint.pt")["model"],
                               load_checkpoint(tmp_path / "straight" / "checkpoint.pt")["model"], rtol=0, atol=0)
    run = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert run["processes"] == 2 and len(run["init"]["weights_sha256"]) == 64
    # only rank 0 wrote: one line per epoch, no temporary files left by another rank
    assert sorted(p.name for p in (tmp_path / "straight").iterdir()) == ["checkpoint.pt", "metrics.jsonl",
                                                                          "run.json", "summary.json"]


# --- decisions ----------------------------------------------------------------------------------------------
def test_a_refusal_on_rank_0_ends_every_rank(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text('{"mine": 1}')                     # only rank 0 looks at the folder
    t0 = time.monotonic()
    r = _torchrun(["-m", "impulse_attn", "train", *FLAGS, "--out", str(out)], timeout=90)
    assert r.returncode != 0 and time.monotonic() - t0 < 90
    lines = [line for line in r.stderr.splitlines() if line.startswith("impulse-attn train: error:")]
    assert len(lines) == 2 and all("already holds a run" in line for line in lines)   # each rank, one line
    assert (out / "run.json").read_text() == '{"mine": 1}'
    r = _torchrun(["-m", "impulse_attn", "train", *FLAGS, "--batch-size", "9", "--out", str(tmp_path / "b")],
                  timeout=90)
    assert r.returncode != 0 and "--batch-size 9 (the global batch) does not split over 2 processes" in r.stderr
    assert not (tmp_path / "b").exists()
