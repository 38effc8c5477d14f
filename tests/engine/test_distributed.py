"""Distributed training: shares of the data, DDP in the engine, torchrun runs of the image tasks.

The in-process tests use a process group of one (Gloo); the slow ones launch two
CPU processes with torchrun, as a user would on a machine with two GPUs.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch import nn

from neurodl.config import TrainOptions
from neurodl.data.batches import ImageBatches
from neurodl.data.phantom import generate_cohort
from neurodl.data.sharding import process_share
from neurodl.engine import TensorBatches, fit
from neurodl.errors import UsageError
from neurodl.io.state import load_state
from neurodl_testing.engine import Regression, line_data, torchrun


@pytest.mark.parametrize("n", [1, 5, 8, 13])
@pytest.mark.parametrize("world", [2, 3, 4])
def test_training_shares_are_equal_and_cover_every_item(n, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n)).tolist()
    shares = [process_share(order, rank, world, pad=True) for rank in range(world)]
    assert len({len(s) for s in shares}) == 1  # every process takes the same number of steps
    assert set().union(*shares) == set(order)
    assert sum(len(s) for s in shares) - n < world  # padding repeats fewer items than processes


@pytest.mark.parametrize("n", [1, 5, 8])
@pytest.mark.parametrize("world", [2, 3])
def test_validation_shares_joined_in_rank_order_give_the_order_back(n, world):
    order = list(range(n))
    joined = [i for rank in range(world) for i in process_share(order, rank, world, pad=False)]
    assert joined == order


class Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 7

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor([float(index)]), torch.tensor(index)


def test_image_batches_give_each_process_a_disjoint_share_of_the_epoch_order():
    batches = ImageBatches(Items(), batch_size=2, shuffle=True, seed=4)
    batches.set_epoch(3)
    whole = [int(i) for _, y in batches for i in y]
    shards = [batches.shard(rank, 2, pad=True) for rank in range(2)]
    seen = [[int(i) for _, y in shard for i in y] for shard in shards]
    assert len(shards[0]) == len(shards[1]) == 2
    assert seen[0] + seen[1] == whole + whole[:1]  # the same order, split, padded with its start
    batches.set_epoch(4)
    assert [int(i) for _, y in batches.shard(0, 2, pad=True) for i in y] != seen[0]


@pytest.fixture
def group_of_one(tmp_path: Path):
    """A process group of one process: the distributed code paths, in this process."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _task() -> Regression:
    torch.manual_seed(0)
    return Regression(nn.Sequential(nn.Linear(1, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1)))


def _batches():
    x, y = line_data(n=32, noise=0.1)
    xv, yv = line_data(n=12, noise=0.1, seed=2)
    return TensorBatches(x, y, batch_size=8, shuffle=True, seed=1), TensorBatches(xv, yv, batch_size=5)


def test_ddp_with_one_process_trains_exactly_like_a_single_process(group_of_one, tmp_path: Path):
    options = TrainOptions(epochs=3, batch_size=8, patience=0, device="cpu", seed=1)
    plain = _task()
    fit(plain, *_batches(), options, checkpoint=tmp_path / "plain.safetensors")
    wrapped = _task()
    result = fit(
        wrapped, *_batches(), replace(options, distributed=True), checkpoint=tmp_path / "ddp.safetensors"
    )
    assert type(wrapped.model) is nn.Sequential  # unwrapped after the fit
    for (name, a), (_, b) in zip(
        plain.model.state_dict().items(), wrapped.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    # Checkpoints have the single-process layout, so a run resumes with any number of processes.
    assert load_state(tmp_path / "ddp.safetensors")["model"].keys() == plain.model.state_dict().keys()
    assert all(0.0 <= r["data_wait"] <= 1.0 for r in result.history)


class TwoNetworks(Regression):
    """A task with two networks and its own optimiser steps (like a GAN)."""

    def __init__(self, distribute: bool) -> None:
        torch.manual_seed(0)
        self.first, self.second = nn.Linear(1, 4), nn.Linear(4, 1)
        self.model = nn.ModuleDict({"first": self.first, "second": self.second})
        self.wrapped: list[str] = []
        if distribute:
            self.distribute = self._distribute

    def _distribute(self, wrap):
        self.first, self.second = wrap(self.first), wrap(self.second)
        self.wrapped.append(type(self.first).__name__)

    def optimizer_groups(self):
        return {
            "first": (self.model["first"].parameters(), None),
            "second": (self.model["second"].parameters(), None),
        }

    def training_step(self, batch, step):
        x, y = batch
        loss = nn.functional.mse_loss(self.second(self.first(x)).squeeze(1), y)
        step("first", loss)
        return {"loss": loss}

    def validation_step(self, batch):
        x, y = batch
        return {"output": self.model["second"](self.model["first"](x)).squeeze(1), "target": y}


def test_a_task_with_several_networks_wraps_them_itself(group_of_one):
    options = TrainOptions(epochs=2, batch_size=8, patience=0, device="cpu", distributed=True)
    task = TwoNetworks(distribute=True)
    fit(task, *_batches(), options)
    assert task.wrapped == ["DistributedDataParallel", "Linear"]  # wrapped for training, then unwrapped
    assert task.first is task.model["first"]
    with pytest.raises(UsageError, match="several networks"):
        fit(TwoNetworks(distribute=False), *_batches(), options)


def test_distributed_fit_without_a_process_group_is_a_usage_error():
    options = TrainOptions(epochs=1, device="cpu", distributed=True)
    with pytest.raises(UsageError, match="torchrun"):
        fit(_task(), *_batches(), options)


def test_distributed_flag_without_torchrun_exits_2(run_cli, tmp_path: Path, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    manifest = tmp_path / "m.tsv"
    manifest.write_text("participant_id\tt1\tdiagnosis\n")
    result = run_cli("classify", "train", manifest, "--out", tmp_path / "run", "--distributed")
    assert result.exit_code == 2
    assert "torchrun" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


# -- two processes, launched by torchrun ----------------------------------------------

TINY_CLASSIFY = ["--model", "cnn", "--depth", "2", "--width", "4", "--size", "16", "--spacing", "1.5"]
TINY_SEGMENT = ["--model", "unet", "--patch", "16", "--spacing", "1.5", "--samples-per-image", "1"]
COMMON = ["--image", "t1", "--epochs", "2", "--batch-size", "2", "--augment", "none", "--json", "--quiet"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    generate_cohort(root, n=10, size=24, seed=5)
    return root / "participants.tsv"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("task", "tiny", "validation_keys"),
    [("classify", TINY_CLASSIFY, ("accuracy", "roc_auc")), ("segment", TINY_SEGMENT, ("dice",))],
)
def test_two_processes_write_one_run_with_the_metrics_rank_0_reports(
    cohort, tmp_path, task, tiny, validation_keys
):
    out = tmp_path / "runs" / task
    done = torchrun(
        "-m", "neurodl", task, "train", cohort, *COMMON, *tiny, "--out", out, "--distributed", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # one JSON document: only rank 0 printed
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [task]
    assert json.loads((out / "config.json").read_text())["options"]["train"]["distributed"] is True
    metrics = json.loads((out / "metrics.json").read_text())["validation"]
    for key in validation_keys:
        assert summary["metrics"][key] == pytest.approx(metrics[key])
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history["data_wait"].between(0, 1).all()
    assert not list(out.rglob(".*.tmp*"))  # no temporary file left by a second writer


STOP_AT_EPOCH_2 = """
import contextlib, sys
import neurodl.tasks._driver as driver
from neurodl.engine import Callback
from neurodl.cli.main import main

class StopAtEpoch2(Callback):
    def on_step(self, *, epoch, step, loss):
        if epoch == 2:
            raise KeyboardInterrupt  # every process at the same step, like Ctrl-C

plain = driver.progress

@contextlib.contextmanager
def progress(console, quiet, description):
    with plain(console, quiet, description) as callbacks:
        yield [*callbacks, StopAtEpoch2()]

driver.progress = progress  # the driver shows every task's progress
sys.exit(main())
"""


@pytest.mark.slow
def test_a_run_interrupted_in_two_processes_resumes_in_one(cohort, tmp_path, run_cli):
    script = tmp_path / "interrupted.py"
    script.write_text(textwrap.dedent(STOP_AT_EPOCH_2))
    out = tmp_path / "run"
    done = torchrun(
        script,
        "classify",
        "train",
        cohort,
        *COMMON,
        *TINY_CLASSIFY,
        "--out",
        out,
        "--distributed",
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert "interrupted after 1 of 2 epochs" in done.stderr
    first_epoch = load_state(out / "checkpoints" / "final.safetensors")["history"][0]

    resumed = run_cli("classify", "train", "--resume", "--out", out, "--quiet")
    assert resumed.exit_code == 0, resumed.output
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert history.iloc[0]["val_loss"] == pytest.approx(first_epoch["val_loss"])
    assert (out / "model.safetensors").exists()


def test_resume_accepts_distributed_as_how_to_run_not_what_to_train(run_cli, tmp_path: Path, monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    result = run_cli("classify", "train", "--resume", "--out", tmp_path / "run", "--distributed")
    assert result.exit_code == 2
    assert "torchrun" in result.stderr and "cannot be changed" not in result.stderr
    changed = run_cli(
        "classify", "train", "--resume", "--out", tmp_path / "run", "--distributed", "--lr", "0.1"
    )
    assert changed.exit_code == 2 and "--lr cannot be changed" in changed.stderr
