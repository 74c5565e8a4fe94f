"""fastai 1 on 2 real CPU ranks gives one process's answers: training on shards, lr_find, validation,
metrics, predictions, `load`, and host steps (the app `fastai_v1`)."""

from __future__ import annotations

import math

import pytest

from tests.environments import requires_fastai
from tests.http_counter import CountingServer
from tests.shells import on_ranks, pull

pytestmark = [pytest.mark.slow, *requires_fastai(1)]

# The lesson's tabular data, as every rank and the one-process reference build it.
SETUP = """
from fastai.tabular import *
from sklearn.datasets import load_breast_cancer
import matplotlib.pyplot as plt

cancer = load_breast_cancer(as_frame=True)
df = cancer.frame.assign(target=cancer.frame.target.map({0: 'malignant', 1: 'benign'}))
valid_idx = list(np.random.RandomState(42).permutation(len(df))[: len(df) // 5])
data = TabularDataBunch.from_df(WORK, df, 'target', valid_idx=valid_idx, procs=[Normalize],
                                cont_names=list(cancer.feature_names), cat_names=[], bs=32)

def make():
    torch.manual_seed(42)
    return tabular_learner(data, layers=[64, 32], metrics=[accuracy, FBeta(), AUROC()])

def weights(learn):
    return {k: v.detach().clone() for k, v in learn.model.state_dict().items()}

def suggestion(learn):
    learn.recorder.plot(suggestion=True, return_fig=True)
    plt.close('all')
    return float(learn.recorder.min_grad_lr)

class RowsSeen(Callback):
    "The continuous inputs of every training batch this rank trains on."
    def on_train_begin(self, **kwargs): self.rows = []
    def on_batch_begin(self, last_input, train, **kwargs):
        if train: self.rows.append(last_input[1].clone())

class NoGradientSync(LearnerCallback):
    "Each rank trains alone on its shard: DDP does not average the gradients."
    def on_batch_begin(self, train, **kwargs):
        if train:
            self.no_sync = self.learn.model.no_sync()
            self.no_sync.__enter__()
    def on_backward_end(self, **kwargs): self.no_sync.__exit__(None, None, None)
"""
TRAINING_BATCHES = 14  # of the whole training set at bs=32, as one process sees them per epoch


@pytest.fixture(scope="module")
def lesson(fastai_ranks, tmp_path_factory):
    """The ranks and a one-process namespace, both with SETUP run."""
    shell = fastai_ranks
    shell.user_ns["WORK"] = tmp_path_factory.mktemp("fastai1")
    shell.run_line_magic("dip", "--push WORK")
    shell.run_cell_magic("dip", "", SETUP)
    local = {"WORK": shell.user_ns["WORK"]}
    exec(SETUP, local)
    return shell, local


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
        "learn = make()\nseen = RowsSeen()\nlearn.fit_one_cycle(1, 1e-2, callbacks=[seen])\n"
        "rows, synced = seen.rows, weights(learn)\n",
    )
    rows = [pull(shell, "rows", rank) for rank in (0, 1)]
    assert [len(batches) for batches in rows] == [math.ceil(TRAINING_BATCHES / 2)] * 2
    seen = [{tuple(row.tolist()) for row in torch.cat(batches)} for batches in rows]
    training_set = {tuple(row.tolist()) for row in torch.tensor(local["data"].train_ds.x.conts).float()}
    assert seen[0] <= training_set and seen[1] <= training_set and seen[0] != seen[1]
    synced = [pull(shell, "synced", rank) for rank in (0, 1)]
    assert synced[0].keys() == synced[1].keys()
    assert all(torch.equal(synced[0][key], synced[1][key]) for key in synced[0])
    on_ranks(
        shell,
        "learn = make()\nlearn.fit_one_cycle(1, 1e-2, callbacks=[NoGradientSync(learn)])\n"
        "alone = weights(learn)",
    )
    alone = [pull(shell, "alone", rank) for rank in (0, 1)]
    assert not all(torch.equal(alone[0][key], alone[1][key]) for key in alone[0])
    assert not all(torch.equal(synced[0][key], alone[0][key]) for key in alone[0])


def test_lr_find_sweeps_the_one_process_learning_rates_on_the_loss_of_all_ranks(lesson):
    shell, local = lesson
    code = (
        "learn = make()\nlearn.lr_find()\nsuggested = suggestion(learn)\n"
        "losses = [float(x) for x in learn.recorder.losses]\n"
        "learn = make()\nlearn.lr_find(stop_div=False)\n"
        "lrs, epoch_batches = [float(x) for x in learn.recorder.lrs], learn.recorder.nb_batches[0]\n"
    )
    on_ranks(shell, code)
    exec(code, local)
    assert pull(shell, "lrs") == pytest.approx(local["lrs"], rel=1e-9)
    assert len(local["lrs"]) == 100
    # On shards: half the batches per epoch.
    assert (local["epoch_batches"], pull(shell, "epoch_batches")) == (TRAINING_BATCHES, 7)
    suggested = pull(shell, "suggested")
    assert local["suggested"] / 2 <= suggested <= local["suggested"] * 2, (suggested, local["suggested"])
    # Every rank records the same losses: the mean over the ranks, not its own shard's.
    assert pull(shell, "losses", 0) == pull(shell, "losses", 1)


def test_validation_metrics_and_predictions_are_one_process_values_on_the_same_weights(lesson):
    import torch

    shell, local = lesson
    on_ranks(
        shell,
        "learn = make()\nlearn.fit_one_cycle(2, 1e-2)\n"
        "trained = len(learn.recorder.losses)\n"
        "row = [float(learn.recorder.val_losses[-1])] + [float(x) for x in learn.recorder.metrics[-1]]\n"
        "validated = [float(x) for x in learn.validate()]\n"
        "preds, targets = learn.get_preds()\n"
        "final = weights(learn)\n",
    )
    assert pull(shell, "trained") == 2 * math.ceil(TRAINING_BATCHES / 2)
    learn = local["make"]()
    learn.model.load_state_dict(pull(shell, "final"))
    expected = [float(x) for x in learn.validate()]
    expected_preds, expected_targets = learn.get_preds()
    for rank in (0, 1):
        assert pull(shell, "row", rank) == pytest.approx(expected, rel=1e-6), rank
        assert pull(shell, "validated", rank) == pytest.approx(expected, rel=1e-6), rank
        assert torch.equal(pull(shell, "targets", rank), expected_targets), rank
        assert torch.allclose(pull(shell, "preds", rank), expected_preds, atol=1e-6), rank


def test_load_and_load_learner_read_fastai_files_without_changing_the_environment(lesson):
    shell, _ = lesson
    on_ranks(
        shell,
        "import os\nlearn = make()\nlearn.save('mine')\nlearn.export('mine.pkl')\n"
        "seen, load = [], torch.load\n"
        "def spy(*args, **kwargs):\n"
        "    seen.append(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))\n"
        "    return load(*args, **kwargs)\n"
        "torch.load = spy\n"
        "try:\n    learn.load('mine')\n    loaded = type(load_learner(learn.path, 'mine.pkl')).__name__\n"
        "finally:\n    torch.load = load\n",
    )
    assert pull(shell, "seen") == [None, None]
    assert pull(shell, "loaded", 1) == "Learner"


def test_downloads_and_file_writes_run_once_per_host(lesson, tmp_path):
    import numpy as np
    from PIL import Image

    shell, _ = lesson
    site = tmp_path / "site"
    site.mkdir()
    (site / "weights.bin").write_bytes(b"0" * 1000)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 60 * i, dtype=np.uint8)).save(site / f"{i}.png")
    urls = tmp_path / "urls.txt"
    with CountingServer(site) as server:
        urls.write_text("\n".join(server.url(f"{i}.png") for i in range(3)))
        shell.user_ns.update(url=server.url("weights.bin"), folder=tmp_path)
        shell.run_line_magic("dip", "--push url folder")
        on_ranks(
            shell,
            "from fastai.vision import download_images\n"
            "download_url(url, folder / 'weights.bin', show_progress=False)\n"
            "download_images(folder / 'urls.txt', folder / 'images')\n"
            "# A slow disk on rank 0: the others go on only once the files are there.\n"
            "import time, torch.distributed as dist\nsave = torch.save\n"
            "if dist.get_rank() == 0:\n    torch.save = lambda *a, **k: (time.sleep(1), save(*a, **k))\n"
            "learn = make()\n"
            "try:\n    learn.save('slow')\n    learn.export('slow.pkl')\nfinally:\n    torch.save = save\n"
            "written = [p.exists() and p.stat().st_size > 0 for p in "
            "(learn.path / learn.model_dir / 'slow.pth', learn.path / 'slow.pkl')]",
        )
        assert server.gets("weights.bin") == 1
        assert [server.gets(f"{i}.png") for i in range(3)] == [1, 1, 1]
    for rank in (0, 1):
        assert pull(shell, "written", rank) == [True, True], rank
