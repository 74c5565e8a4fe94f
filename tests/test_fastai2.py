"""fastai 2 on 2 real CPU ranks gives one process's answers: training on shards, lr_find, validation,
metrics, predictions, a user's own `distrib_ctx`, and host steps (the app `fastai`)."""

from __future__ import annotations

import math

import pytest

from tests.environments import requires_fastai
from tests.http_counter import CountingServer
from tests.shells import on_ranks, pull

pytestmark = [pytest.mark.slow, *requires_fastai(2)]

# The lesson's tabular data, as every rank and the one-process reference build it.
SETUP = """
from fastai.tabular.all import *
from sklearn.datasets import load_breast_cancer

cancer = load_breast_cancer(as_frame=True)
df = cancer.frame.assign(target=cancer.frame.target.map({0: 'malignant', 1: 'benign'}))
splits = RandomSplitter(valid_pct=0.2, seed=42)(range_of(df))
dls = TabularDataLoaders.from_df(df, path=WORK, procs=[Normalize], cont_names=list(cancer.feature_names),
                                 y_names='target', valid_idx=splits[1], bs=32)

def make():
    set_seed(42)
    return tabular_learner(dls, layers=[64, 32], metrics=[accuracy, F1Score(), RocAucBinary()])

def weights(learn):
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}

class RowsSeen(Callback):
    "The continuous inputs of every training batch this rank trains on."
    def before_fit(self): self.rows = []
    def before_batch(self):
        if self.training: self.rows.append(self.x[1].clone())

class NoGradientSync(Callback):
    "Each rank trains alone on its shard: DDP does not average the gradients."
    def before_batch(self):
        if self.training:
            self.no_sync = self.learn.model.no_sync()
            self.no_sync.__enter__()
    def after_backward(self): self.no_sync.__exit__(None, None, None)
"""
TRAINING_BATCHES = 14  # of the whole training set at bs=32, as one process sees them per epoch


@pytest.fixture(scope="module")
def lesson(fastai_ranks, tmp_path_factory):
    """The ranks and a one-process namespace, both with SETUP run."""
    shell = fastai_ranks
    shell.user_ns["WORK"] = tmp_path_factory.mktemp("fastai2")
    shell.run_line_magic("dip", "--push WORK")
    shell.run_cell_magic("dip", "", SETUP)
    local = {"WORK": shell.user_ns["WORK"]}
    exec(SETUP, local)
    return shell, local


def assert_same_weights(left: dict, right: dict) -> None:
    import torch

    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


def test_the_first_fit_says_once_how_large_the_global_batch_is(lesson, capsys):
    shell, _ = lesson
    on_ranks(shell, "import ddipp.apps.rankside as rankside\nrankside._told_global_batch = False")
    capsys.readouterr()
    on_ranks(shell, "learn = make()\nlearn.fit(1)\nlearn.fit(1)")
    notices = [line for line in capsys.readouterr().out.splitlines() if line.startswith("ddipp:")]
    assert len(notices) == 1 and "global batch of 64" in notices[0], notices
    assert "bs=16 (bs // 2)" in notices[0]


def test_each_rank_trains_on_its_half_and_the_ranks_end_with_the_same_weights(lesson):
    import torch

    shell, local = lesson
    on_ranks(
        shell,
        "learn = make()\nseen = RowsSeen()\nlearn.fit_one_cycle(1, 1e-2, cbs=seen)\n"
        "rows, synced = seen.rows, weights(learn)\n",
    )
    rows = [pull(shell, "rows", rank) for rank in (0, 1)]
    assert [len(batches) for batches in rows] == [math.ceil(TRAINING_BATCHES / 2)] * 2
    seen = [{tuple(row.tolist()) for row in torch.cat(batches)} for batches in rows]
    training_set = {tuple(row.tolist()) for row in torch.tensor(local["dls"].train_ds.conts.values).float()}
    # Different batches from the training set: the two halves of one epoch's draw (the lesson's
    # loader draws with replacement, so the halves may share rows).
    assert seen[0] <= training_set and seen[1] <= training_set and seen[0] != seen[1]
    synced = [pull(shell, "synced", rank) for rank in (0, 1)]
    assert_same_weights(synced[0], synced[1])
    on_ranks(
        shell, "learn = make()\nlearn.fit_one_cycle(1, 1e-2, cbs=NoGradientSync())\nalone = weights(learn)\n"
    )
    alone = [pull(shell, "alone", rank) for rank in (0, 1)]
    assert not all(torch.equal(alone[0][key], alone[1][key]) for key in alone[0])
    assert not all(torch.equal(synced[0][key], alone[0][key]) for key in alone[0])


def test_lr_find_sweeps_the_one_process_learning_rates_on_the_loss_of_all_ranks(lesson):
    shell, local = lesson
    code = (
        "learn = make()\nsuggested = float(learn.lr_find(show_plot=False).valley)\n"
        "losses = [float(x) for x in learn.recorder.losses]\n"
        "learn = make()\nlearn.lr_find(stop_div=False, show_plot=False)\n"
        "lrs, epochs = [float(x) for x in learn.recorder.lrs], learn.n_epoch\n"
    )
    on_ranks(shell, code)
    exec(code, local)
    assert pull(shell, "lrs") == pytest.approx(local["lrs"], rel=1e-9)
    assert len(local["lrs"]) == 100
    # On shards: half the batches per epoch, so twice the epochs (lr_find's own + 1).
    assert (local["epochs"], pull(shell, "epochs")) == (100 // TRAINING_BATCHES + 1, 100 // 7 + 1)
    suggested = pull(shell, "suggested")
    assert local["suggested"] / 2 <= suggested <= local["suggested"] * 2, (suggested, local["suggested"])
    # Every rank records the same losses: the mean over the ranks, not its own shard's.
    assert pull(shell, "losses", 0) == pull(shell, "losses", 1)


VALIDATION = (
    "trained = len(learn.recorder.losses)\n"
    "row = [float(x) for x in learn.recorder.values[-1][1:]]\n"
    "validated = [float(x) for x in learn.validate()]\n"
    "preds, targets = learn.get_preds()\n"
    "final = weights(learn)\n"
)


def assert_one_process_validation(shell, local, epochs: int) -> None:
    """The ranks trained on shards, and every rank's last epoch, `validate()` and `get_preds()`
    equal one process's on rank 0's weights."""
    import torch

    assert pull(shell, "trained") == epochs * math.ceil(TRAINING_BATCHES / 2)

    learn = local["make"]()
    learn.model.load_state_dict(pull(shell, "final"))
    expected = [float(x) for x in learn.validate()]
    expected_preds, expected_targets = learn.get_preds()
    for rank in (0, 1):
        assert pull(shell, "row", rank) == pytest.approx(expected, rel=1e-6), rank
        assert pull(shell, "validated", rank) == pytest.approx(expected, rel=1e-6), rank
        assert torch.equal(pull(shell, "targets", rank), expected_targets), rank
        assert torch.allclose(pull(shell, "preds", rank), expected_preds, atol=1e-6), rank


def test_validation_metrics_and_predictions_are_one_process_values_on_the_same_weights(lesson):
    shell, local = lesson
    on_ranks(shell, "learn = make()\nlearn.fit_one_cycle(2, 1e-2)\n" + VALIDATION)
    assert_one_process_validation(shell, local, epochs=2)


def test_a_users_own_distrib_ctx_trains_and_validates_as_the_patched_fit_does(lesson):
    shell, local = lesson
    on_ranks(
        shell, "learn = make()\nwith learn.distrib_ctx():\n    learn.fit_one_cycle(2, 1e-2)\n" + VALIDATION
    )
    assert_one_process_validation(shell, local, epochs=2)


def test_a_fit_with_sync_batchnorm_leaves_the_model_with_its_own_batchnorm_layers(lesson):
    shell, _ = lesson
    on_ranks(
        shell,
        "from fastai.distributed import DistributedTrainer\n"
        "class OnGpu(nn.Module):\n"
        "    'The model wrapped as DDP wraps it (.module), on any device: DDP takes SyncBatchNorm on GPUs'\n"
        "    def __init__(self, model):\n"
        "        super().__init__()\n"
        "        self.module, self.device = model, torch.device('cpu')\n"
        "learn = make()\ntrainer = DistributedTrainer()\n"
        "trainer.sync_bn, trainer.accelerator.prepare = True, OnGpu\n"
        "learn.fit(0, cbs=trainer)\nlayers = sorted({type(m).__name__ for m in learn.model.modules()})",
    )
    layers = pull(shell, "layers")
    assert "SyncBatchNorm" not in layers and "BatchNorm1d" in layers, layers


def test_downloads_and_file_writes_run_once_per_host(lesson, tmp_path):
    import numpy as np
    from PIL import Image

    shell, _ = lesson
    site = tmp_path / "site"
    site.mkdir()
    (site / "weights.bin").write_bytes(b"0" * 1000)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, dtype=np.uint8)).save(site / f"{i}.png")
        (images / f"broken{i}.jpg").write_bytes(b"not an image")
    with CountingServer(site) as server:
        shell.user_ns.update(
            url=server.url("weights.bin"), urls=[server.url(f"{i}.png") for i in range(3)], folder=tmp_path
        )
        shell.run_line_magic("dip", "--push url urls folder")
        on_ranks(
            shell,
            "from fastdownload import download_url\n"
            "from fastai.vision.all import download_images, verify_images\n"
            "download_url(url, folder / 'weights.bin', show_progress=False)\n"
            "download_images(folder / 'images', urls=urls)\n"
            "failed = verify_images(get_image_files(folder / 'images'))\n"
            "failed.map(Path.unlink)\n"
            "left = sorted(p.suffix for p in (folder / 'images').iterdir())\n"
            "# A slow disk on rank 0: the others go on only once the files are there.\n"
            "import time, torch, torch.distributed as dist\nsave = torch.save\n"
            "if dist.get_rank() == 0:\n    torch.save = lambda *a, **k: (time.sleep(1), save(*a, **k))\n"
            "learn = make()\n"
            "try:\n"
            "    saved = learn.save('slow')\n    learn.export('slow.pkl')\n"
            "finally:\n    torch.save = save\n"
            "written = [saved.exists(), (learn.path / 'slow.pkl').exists()]",
        )
        assert server.gets("weights.bin") == 1
        assert [server.gets(f"{i}.png") for i in range(3)] == [1, 1, 1]
    for rank in (0, 1):
        assert pull(shell, "left", rank) == [".png"] * 3, rank
        assert pull(shell, "written", rank) == [True, True], rank
