"""The fastai lessons' training, as functions every contender runs unchanged.

The same code runs in one process, on ddipp's ranks (under `%autodip`), and as a script under
torchrun. fastai 1 or 2, whichever is installed. Per-rank batch sizes are the lesson's (32 for
tabular, 64 for vision): on N ranks each optimizer step sees N times as many samples.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

EPOCHS_TABULAR = 5
EPOCHS_VISION = 4


def fastai_major() -> int:
    import fastai

    return int(fastai.__version__.split(".")[0])


def render_digits(folder: Path) -> Path:
    """scikit-learn's digits as 32x32 PNG files in one folder per class (no download)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        target = folder / str(label)
        target.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((32, 32)).convert("RGB")
        image.save(target / f"{index}.png")
    return folder


def tabular(work: Path) -> dict:
    """Breast-cancer data, a 64-32 MLP, fit_one_cycle: accuracy and the fit's wall time."""
    return _fit_and_score(lesson_tabular_learner(work), EPOCHS_TABULAR)


def lesson_tabular_learner(work: Path, more_metrics: bool = False):
    """The lesson's tabular learner on breast-cancer data (seeded); with `more_metrics`, also an F
    score and the ROC AUC, fastai's callback metrics."""
    from sklearn.datasets import load_breast_cancer

    cancer = load_breast_cancer(as_frame=True)
    df = cancer.frame.assign(target=cancer.frame.target.map({0: "malignant", 1: "benign"}))
    conts = list(cancer.feature_names)
    if fastai_major() == 2:
        from fastai.tabular.all import (
            F1Score,
            Normalize,
            RandomSplitter,
            RocAucBinary,
            TabularDataLoaders,
            accuracy,
            range_of,
            set_seed,
            tabular_learner,
        )

        splits = RandomSplitter(valid_pct=0.2, seed=42)(range_of(df))
        dls = TabularDataLoaders.from_df(
            df, path=work, procs=[Normalize], cont_names=conts, y_names="target", valid_idx=splits[1], bs=32
        )
        set_seed(42)
        metrics = [accuracy, F1Score(), RocAucBinary()] if more_metrics else accuracy
        return tabular_learner(dls, layers=[64, 32], metrics=metrics)
    import numpy as np
    import torch
    from fastai.tabular import AUROC, FBeta, Normalize, TabularDataBunch, accuracy, tabular_learner

    valid_idx = list(np.random.RandomState(42).permutation(len(df))[: len(df) // 5])
    data = TabularDataBunch.from_df(
        work, df, "target", valid_idx=valid_idx, procs=[Normalize], cont_names=conts, cat_names=[], bs=32
    )
    torch.manual_seed(42)
    metrics = [accuracy, FBeta(), AUROC()] if more_metrics else accuracy
    return tabular_learner(data, layers=[64, 32], metrics=metrics)


def vision(work: Path, digits: Path) -> dict:
    """Digits as images, resnet18 without pretrained weights: accuracy and the fit's time."""
    if fastai_major() == 2:
        from fastai.vision.all import ImageDataLoaders, accuracy, resnet18, set_seed, vision_learner

        dls = ImageDataLoaders.from_folder(digits, valid_pct=0.2, seed=42, bs=64)
        set_seed(42)
        learn = vision_learner(dls, resnet18, pretrained=False, metrics=accuracy, path=work)
    else:
        import torch
        from fastai.vision import ImageDataBunch, accuracy, cnn_learner, models

        data = ImageDataBunch.from_folder(digits, train=".", valid_pct=0.2, seed=42, size=32, bs=64)
        torch.manual_seed(42)
        learn = cnn_learner(data, models.resnet18, pretrained=False, metrics=accuracy, path=work)
    return _fit_and_score(learn, EPOCHS_VISION)


def _fit_and_score(learn, epochs: int) -> dict:
    began = time.perf_counter()
    learn.fit_one_cycle(epochs, 1e-2)
    fit_s = time.perf_counter() - began
    return {"accuracy": float(learn.validate()[1]), "fit_s": fit_s}


WORKLOADS = ("tabular", "vision")


def run(work: Path, name: str) -> dict:
    """The workload `name` (one of `WORKLOADS`) in the folder `work`."""
    if name == "tabular":
        return tabular(work)
    digits = work / "digits"
    if not digits.exists():
        render_digits(digits)
    return vision(work, digits)


def run_all(work: Path) -> dict:
    return {name: run(work, name) for name in WORKLOADS}


if __name__ == "__main__":
    # `python -m bench.fastai_workload WORK [tabular|vision]`: one process, or every rank under
    # torchrun; both workloads unless one is named.
    import sys

    import torch

    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    if "RANK" in os.environ:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        # fastai cannot train on CPU ranks unpatched (see docs/fastai.md): the launcher gets
        # the same patches the notebook's ranks get, so that only the orchestration differs.
        module = "fastai2_rank" if fastai_major() == 2 else "fastai1_rank"
        __import__(f"ddipp.apps.{module}", fromlist=["_"]).apply_patches()
    result = {name: run(work, name) for name in sys.argv[2:]} if sys.argv[2:] else run_all(work)
    if int(os.environ.get("RANK", "0")) == 0:
        print("RESULT " + json.dumps(result), flush=True)
    if "RANK" in os.environ:
        torch.distributed.destroy_process_group()
