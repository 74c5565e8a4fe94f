"""fastai 2.x under ddipp, run inside each rank: every patch, what it fixes and why.

Paths are in fastai 2.8.12's installed source; docs/fastai.md lists the same with the lines.

1. `Learner.fit` runs inside `Learner.distrib_ctx` when a process group is up (fastai trains
   distributed only inside it, fastai/distributed.py), so `fit`, `fit_one_cycle`, `fine_tune`
   and `lr_find` train under DDP with no change to the user's code. A fit that already has a
   `DistributedTrainer` (the user's own `with learn.distrib_ctx():`) is left as it is.
2. `lr_find` runs `num_it` iterations: `Learner.lr_find` (fastai/callback/schedule.py) sets
   `n_epoch = num_it // len(dls.train) + 1` from the whole training loader, while each rank's
   epoch has 1/N of its batches; `fit` sets it from the sharded length instead.
3. `DistributedTrainer.__init__` (fastai/distributed.py): on CPU ranks `cpu=True` for accelerate
   (else it picks no distribution and leaves the model unwrapped) and `sync_bn=False`
   (`SyncBatchNorm` only works with GPU modules), for `distrib_ctx()` with its defaults too.
4. `DistributedTrainer.before_fit`/`before_validate` wrap every loader, the validation one too,
   in a `DistributedDL`, which pads it to a multiple of N with repeated items: `valid_loss` and
   `AvgMetric`s (accuracy) then count the repeats and weigh shards by local batch sizes. Only the
   training loader is sharded now; validation (in `fit`, `validate`, `get_preds`) runs on every
   rank over the whole validation set, so every metric is the one-process value.
5. `maybe_gather` (fastai/torch_core.py), used by `to_detach`, gathers from every rank whenever
   `WORLD_SIZE` > 1. It gathers now only while a rank trains on its shard (the smoothed loss
   that `lr_find` decides on and records is then the mean over ranks, as fastai intends), never
   on whole data (validation, `get_preds`, `show_results`), which it would duplicate.
6. `DistributedTrainer.after_fit` unwraps the model but leaves the `SyncBatchNorm` layers that
   `before_fit` put in on GPUs: they are turned back into the original batch-norm layers, so a
   saved or exported model does not carry them.
7. `DistributedDL._broadcast` calls `.cuda()` unconditionally; it now puts the indices on the
   device the backend needs (CPU for gloo).
8. `LRFinder.before_fit`/`after_fit` (fastai/callback/schedule.py): each rank made its own
   temporary folder while only rank 0 saves the model in it, so the other ranks skipped the
   reload (keeping the lr_find weights) and rank 0 hung in `Learner.load`'s barrier. Rank 0 now
   chooses the folder for all, every rank reloads, and the folder is removed once all have.
9. Host steps run once per host (ddipp/apps/hoststep.py): `untar_data`, `download_url`,
   `download_images`, `verify_images` (and `.map(...)` on the files it returns, for
   `.map(Path.unlink)`), `Learner.save`, `Learner.export`, and `!cmd`/`%pip`/`%conda`. fastai
   writes `save`/`export` on rank 0 only but lets the others run on before the file exists.
10. accelerate keeps its state in a per-process singleton: it is reset when the patches are
    applied, so it picks up this group's device choice.
11. The first fit on N ranks says, on rank 0, how large the global batch is.
12. `%matplotlib inline` on every rank, so `lr_find`, `plot_loss` and `show_batch` figures come
    back as images (the notebook shows rank 0's).
"""

from __future__ import annotations

import inspect
import tempfile
from pathlib import Path
from typing import Any

from fastcore.foundation import L

from . import hoststep
from .hoststep import once_per_host
from .rankside import (
    Patches,
    barrier,
    collective_device,
    distributed,
    from_rank0,
    on_gpu,
    rank,
    show_figures_inline,
    tell_global_batch,
)

_patches = Patches()
# Whether this rank is in the training part of a distributed fit, reading its shard of the data.
_training_on_shards = False


class HostFiles(L):
    """The files `verify_images` found broken: `.map(f)` on them (`.map(Path.unlink)`) runs once
    per host, and every rank gets its result."""

    def map(self, f, *args, **kwargs):
        return _map_once(self, f, *args, **kwargs)


_map_once = once_per_host(L.map)


def apply_patches() -> None:
    """Apply every patch (once); called on each rank when the group enters `patched`."""
    if _patches:
        return
    import fastai.data.external as external
    import fastai.distributed as fastai_distributed
    import fastai.torch_core as torch_core
    import fastai.vision.utils as vision_utils
    import fastdownload
    from accelerate.state import AcceleratorState
    from fastai.callback.schedule import LRFinder
    from fastai.learner import Learner

    AcceleratorState._reset_state(reset_partial_state=True)
    trainer = fastai_distributed.DistributedTrainer
    _patch_fit(Learner, trainer, LRFinder, fastai_distributed.DistributedDL)
    _patch_trainer(trainer)
    _patch_gather(torch_core)
    _patch_broadcast(fastai_distributed.DistributedDL)
    _patch_lr_finder(LRFinder)
    for function in (external.untar_data, fastdownload.download_url, vision_utils.download_images):
        once = once_per_host(function)
        for package in ("fastai", "fastdownload"):
            _patches.replace_everywhere(function, once, package)
    _patches.replace_everywhere(
        vision_utils.verify_images, _verify_images_once(vision_utils.verify_images), "fastai"
    )
    for name in ("save", "export"):
        _patches.replace(Learner, name, once_per_host(vars(Learner)[name]))
    hoststep.apply_patches()
    show_figures_inline()


def undo_patches() -> None:
    """Put every patched attribute back; called on each rank when the group is torn down."""
    hoststep.undo_patches()
    _patches.undo()


def _patch_fit(learner_class, trainer_class, lr_finder_class, distributed_dl_class) -> None:
    original_fit = learner_class.fit
    signature = inspect.signature(original_fit)

    def fit(self, *args, **kwargs):
        if not distributed():
            return original_fit(self, *args, **kwargs)
        call = signature.bind(self, *args, **kwargs)
        cbs = list(L(call.arguments.get("cbs")))
        finder = next((cb for cb in cbs if isinstance(cb, lr_finder_class)), None)
        if finder is not None:
            # As Learner.lr_find computes it, from the length of this rank's shard.
            call.arguments["n_epoch"] = finder.num_it // len(distributed_dl_class(self.dls.train)) + 1
        if any(isinstance(cb, trainer_class) for cb in [*self.cbs, *cbs]):
            return original_fit(*call.args, **call.kwargs)
        with self.distrib_ctx():
            return original_fit(*call.args, **call.kwargs)

    fit.__doc__ = original_fit.__doc__
    _patches.replace(learner_class, "fit", fit)


def _patch_trainer(trainer_class) -> None:
    original_init = trainer_class.__init__
    original_before_fit = trainer_class.before_fit
    original_before_train = trainer_class.before_train
    original_after_fit = trainer_class.after_fit

    def __init__(self, sync_bn=True, **kwargs):
        if not on_gpu():
            sync_bn = False
            kwargs.setdefault("cpu", True)
        original_init(self, sync_bn, **kwargs)

    def before_fit(self):
        self.batchnorm_classes = _batchnorm_classes(self.model) if self.sync_bn else {}
        original_before_fit(self)
        self.learn.dls.loaders = [self.dls.loaders[0], *self.old_dls[1:]]
        tell_global_batch(self.old_dls[0].bs)

    def before_train(self):
        global _training_on_shards
        original_before_train(self)
        _training_on_shards = True

    def after_train(self):
        global _training_on_shards
        _training_on_shards = False

    def before_validate(self):
        """Leave the validation loader whole (fastai's shards it): metrics as in one process."""

    def after_fit(self):
        global _training_on_shards
        _training_on_shards = False  # a fit cancelled while training (lr_find) skips after_train
        original_after_fit(self)
        _restore_batchnorm(self.learn.model, self.batchnorm_classes)

    for name, method in [
        ("__init__", __init__),
        ("before_fit", before_fit),
        ("before_train", before_train),
        ("after_train", after_train),
        ("before_validate", before_validate),
        ("after_fit", after_fit),
    ]:
        _patches.replace(trainer_class, name, method)


def _batchnorm_classes(model) -> dict[str, type]:
    """The class of every batch-norm layer of `model` but the model itself, by module name."""
    from torch.nn import SyncBatchNorm
    from torch.nn.modules.batchnorm import _BatchNorm

    return {
        name: type(module)
        for name, module in model.named_modules()
        if name and isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm)
    }


def _restore_batchnorm(model, classes: dict[str, type]) -> None:
    """Turn the `SyncBatchNorm` layers at `classes`' names back into those classes, keeping their
    parameters (the optimizer holds them) and statistics: the reverse of
    `torch.nn.SyncBatchNorm.convert_sync_batchnorm`."""
    from torch.nn import SyncBatchNorm

    for name, batchnorm_class in classes.items():
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        synced = getattr(parent, child_name)
        if not isinstance(synced, SyncBatchNorm):
            continue
        restored = batchnorm_class(
            synced.num_features, synced.eps, synced.momentum, synced.affine, synced.track_running_stats
        )
        if synced.affine:
            restored.weight, restored.bias = synced.weight, synced.bias
        restored.running_mean = synced.running_mean
        restored.running_var = synced.running_var
        restored.num_batches_tracked = synced.num_batches_tracked
        restored.train(synced.training)
        if hasattr(synced, "qconfig"):
            restored.qconfig = synced.qconfig
        setattr(parent, child_name, restored)


def _patch_gather(torch_core) -> None:
    original = torch_core.maybe_gather

    def maybe_gather(x, axis=0):
        return original(x, axis) if _training_on_shards else x

    maybe_gather.__doc__ = original.__doc__
    _patches.replace_everywhere(original, maybe_gather, "fastai")


def _patch_broadcast(distributed_dl_class) -> None:
    def _broadcast(self, t, rank):
        import torch

        tensor = torch.LongTensor(t).to(collective_device())
        torch.distributed.broadcast(tensor, rank)
        return tensor.cpu().tolist()

    _patches.replace(distributed_dl_class, "_broadcast", _broadcast)


def _patch_lr_finder(lr_finder_class) -> None:
    from fastai.callback.schedule import ParamScheduler

    original_before_fit = lr_finder_class.before_fit
    original_after_fit = lr_finder_class.after_fit

    def before_fit(self):
        if not distributed():
            return original_before_fit(self)
        ParamScheduler.before_fit(self)
        path = self.path / self.model_dir
        path.mkdir(parents=True, exist_ok=True)
        self.tmp_d = tempfile.TemporaryDirectory(dir=path) if rank() == 0 else None
        self.tmp_p = from_rank0(Path(self.tmp_d.name).stem if self.tmp_d is not None else None)
        self.learn.save(f"{self.tmp_p}/_tmp")
        self.best_loss = float("inf")

    def after_fit(self):
        if not distributed():
            return original_after_fit(self)
        self.learn.opt.zero_grad()
        saved = self.path / self.model_dir / self.tmp_p / "_tmp.pth"
        if from_rank0(saved.exists()):
            self.learn.load(f"{self.tmp_p}/_tmp", with_opt=True)
        barrier()  # every rank has read the file before rank 0 removes it
        if self.tmp_d is not None:
            self.tmp_d.cleanup()

    _patches.replace(lr_finder_class, "before_fit", before_fit)
    _patches.replace(lr_finder_class, "after_fit", after_fit)


def _verify_images_once(verify_images) -> Any:
    verify_once = once_per_host(verify_images)

    def wrapper(fns):
        return HostFiles(verify_once(fns))

    wrapper.__doc__ = verify_images.__doc__
    return wrapper
