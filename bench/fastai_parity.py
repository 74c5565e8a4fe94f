"""fastai's tools on ddipp's ranks against one process: lr_find, and validation on the same weights.

`measure(work)` runs on every rank under `%autodip` (rank 0 prints its figures and saves its
weights in `work`); `python -m bench.fastai_parity WORK` runs the same lr_find in one process and
validates those weights there. fastai 1 or 2, whichever is installed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.fastai_workload import EPOCHS_TABULAR, fastai_major, lesson_tabular_learner

WEIGHTS = "parity-weights.pt"


def metric_names(learn) -> list[str]:
    """`valid_loss`, then the learner's metrics, by name."""
    if fastai_major() == 2:
        return ["valid_loss", *(metric.name for metric in learn.metrics)]
    return ["valid_loss", *(getattr(metric, "__name__", type(metric).__name__) for metric in learn.metrics)]


def lr_find(work: Path, stop_div: bool = True) -> dict:
    """lr_find with its defaults (`stop_div` aside) on a fresh learner: iterations, last lr, suggestion."""
    learn = lesson_tabular_learner(work)
    if fastai_major() == 2:
        suggestion = float(learn.lr_find(stop_div=stop_div, show_plot=False).valley)
    else:
        import matplotlib.pyplot as plt

        learn.lr_find(stop_div=stop_div)
        learn.recorder.plot(suggestion=True, return_fig=True)
        plt.close("all")
        suggestion = float(learn.recorder.min_grad_lr)
    lrs = [float(lr) for lr in learn.recorder.lrs]
    return {"iterations": len(lrs), "end_lr": lrs[-1], "suggestion": suggestion}


def sweeps(work: Path) -> dict:
    """lr_find as a lesson calls it, and without its divergence stop (so it runs all `num_it`)."""
    return {"lr_find": lr_find(work), "lr_find_no_stop": lr_find(work, stop_div=False)}


def measure(work: Path) -> dict:
    """On the ranks: sweeps, then the lesson's fit; its last epoch's validation and `validate()`."""
    import torch

    figures = sweeps(work)
    learn = lesson_tabular_learner(work, more_metrics=True)
    learn.fit_one_cycle(EPOCHS_TABULAR, 1e-2)
    if fastai_major() == 2:
        last_epoch = [float(value) for value in learn.recorder.values[-1][1:]]
    else:
        last_epoch = [float(learn.recorder.val_losses[-1]), *(float(m) for m in learn.recorder.metrics[-1])]
    figures.update(
        metrics=metric_names(learn),
        last_epoch=last_epoch,
        validate=[float(value) for value in learn.validate()],
    )
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(learn.model.state_dict(), work / WEIGHTS)
        print("RESULT " + json.dumps(figures), flush=True)
    return figures


def measure_one_process(work: Path) -> dict:
    """In one process: the same sweeps, and `validate()` on the weights the ranks saved."""
    import torch

    figures = sweeps(work)
    learn = lesson_tabular_learner(work, more_metrics=True)
    learn.model.load_state_dict(torch.load(work / WEIGHTS))
    figures.update(metrics=metric_names(learn), validate=[float(value) for value in learn.validate()])
    return figures


if __name__ == "__main__":
    import sys

    import torch

    torch.set_num_threads(1)
    print("RESULT " + json.dumps(measure_one_process(Path(sys.argv[1]))), flush=True)
