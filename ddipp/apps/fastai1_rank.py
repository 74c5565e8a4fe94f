"""fastai 1.x (course-v3 API) under ddipp, run inside each rank: every patch and why.

Paths are in fastai 1.0.61's installed source; docs/fastai.md lists the same with the lines.

1. `Learner.fit` adds a DDP trainer callback for the length of the fit when a process group is
   up, so `fit`, `fit_one_cycle` and `lr_find` train under DDP with no change to the user's
   code (fastai 1 does this only after `learn.to_distributed(cuda_id)`, fastai/distributed.py).
   The callback is fastai's `DistributedTrainer` (each rank reads its shard of the training set
   through a distributed sampler, the recorder is silent on ranks other than 0) with three
   changes. On CPU ranks the model is wrapped without `device_ids` (fastai passes a CUDA
   device). The validation loader is not sharded: fastai's sampler pads it with repeated items
   and each rank then reports `valid_loss` and callback metrics (`FBeta`, `AUROC`, ...) of its
   own shard (only `AverageMetric` all-reduces, fastai/callback.py); validation now runs on
   every rank over the whole validation set, so every metric is the one-process value. And the
   smoothed training loss (what the recorder records and `lr_find` decides and plots on) is
   averaged over the ranks (`CallbackHandler.on_backward_begin` smooths each rank's own loss).
2. `LRFinder.on_batch_end` (fastai/callbacks/lr_finder.py) stops the fit after `num_it`
   iterations or when the loss diverges only in one process (`if num_distrib() <= 1`); on N
   ranks it ran on to the end of the epoch, past `end_lr`. With the smoothed loss the same on
   every rank, all ranks stop at that batch together, as one process does.
3. `Learner.load` and `load_learner` (fastai/basic_train.py) read fastai 1's own files with
   `weights_only=False`: fastai 1 pickles its optimizer state and whole learners and predates
   torch's `weights_only=True` default, so `load` (and `lr_find`, which saves and reloads the
   model) and `load_learner` failed with an `UnpicklingError`. Only the `torch.load` calls they
   make in the calling thread are affected; the process environment is left alone.
4. Host steps run once per host (ddipp/apps/hoststep.py): `untar_data`, `download_data`,
   `download_url`, `download_images`, `verify_images` (which deletes and resizes files),
   `Learner.save`, `Learner.export`, and `!cmd`/`%pip`/`%conda`. fastai writes `save`/`export`
   on rank 0 only but lets the others run on before the file exists.
5. The first fit on N ranks says, on rank 0, how large the global batch is.
6. `%matplotlib inline` on every rank, so `recorder.plot()` and `show_batch` figures come back.
"""

from __future__ import annotations

import functools
import threading

from . import hoststep
from .hoststep import once_per_host
from .rankside import Patches, distributed, global_mean, on_gpu, show_figures_inline, tell_global_batch

_patches = Patches()
# Set while `Learner.load` runs in a thread: its `torch.load` calls read fastai 1's own pickles.
_loading = threading.local()


def apply_patches() -> None:
    """Apply every patch (once); called on each rank when the group enters `patched`."""
    if _patches:
        return
    import fastai.basic_train as basic_train
    import fastai.core as core
    import fastai.datasets as datasets
    import fastai.distributed as fastai_distributed
    import fastai.vision.data as vision_data
    import torch
    from fastai.basic_train import Learner
    from fastai.callbacks.lr_finder import LRFinder

    trainer_class = _ddipp_trainer(fastai_distributed.DistributedTrainer)
    _patch_fit(Learner, fastai_distributed.DistributedTrainer, trainer_class)
    _patch_load(Learner, basic_train, torch)
    _patch_lr_finder(LRFinder)
    for function in (
        datasets.untar_data,
        datasets.download_data,
        core.download_url,
        vision_data.download_images,
        vision_data.verify_images,
    ):
        _patches.replace_everywhere(function, once_per_host(function), "fastai")
    for name in ("save", "export"):
        _patches.replace(Learner, name, once_per_host(vars(Learner)[name]))
    hoststep.apply_patches()
    show_figures_inline()


def undo_patches() -> None:
    """Put every patched attribute back; called on each rank when the group is torn down."""
    hoststep.undo_patches()
    _patches.undo()


def _ddipp_trainer(distributed_trainer):
    from torch.nn.parallel import DistributedDataParallel

    class DdippDistributedTrainer(distributed_trainer):
        """fastai 1's `DistributedTrainer` for any device, training on shards, validating on all."""

        def on_train_begin(self, **kwargs):
            import torch

            if on_gpu():
                device = torch.cuda.current_device()
                self.learn.model = DistributedDataParallel(
                    self.model, device_ids=[device], output_device=device
                )
            else:
                self.learn.model = DistributedDataParallel(self.model)
            data = self.data
            tell_global_batch(data.train_dl.batch_size)
            shuffle = data.train_dl.init_kwargs["shuffle"] if hasattr(data.train_dl, "init_kwargs") else True
            self.old_train_dl, data.train_dl, self.train_sampler = self._change_dl(data.train_dl, shuffle)
            self.rank = torch.distributed.get_rank()
            self.recorder.silent = self.rank != 0

        def on_backward_begin(self, smooth_loss, **kwargs):
            return {"smooth_loss": global_mean(smooth_loss)}

        def on_train_end(self, **kwargs):
            self.learn.model = self.learn.model.module
            self.learn.data.train_dl = self.old_train_dl

    return DdippDistributedTrainer


def _patch_fit(learner_class, fastai_trainer, trainer_class) -> None:
    original_fit = learner_class.fit

    def fit(self, epochs, lr=None, wd=None, callbacks=None):
        from fastai.basic_train import defaults
        from fastai.core import listify

        lr = defaults.lr if lr is None else lr
        callbacks = listify(callbacks)
        wrapped = any(isinstance(cb, fastai_trainer) for cb in [*self.callbacks, *callbacks])
        if distributed() and not wrapped:
            callbacks = [*callbacks, trainer_class(self)]
        return original_fit(self, epochs, lr, wd, callbacks)

    fit.__doc__ = original_fit.__doc__
    _patches.replace(learner_class, "fit", fit)


def _patch_load(learner_class, basic_train, torch) -> None:
    original_torch_load = torch.load

    def torch_load(*args, **kwargs):
        if getattr(_loading, "active", False):
            kwargs.setdefault("weights_only", False)
        return original_torch_load(*args, **kwargs)

    torch_load.__doc__ = original_torch_load.__doc__
    _patches.replace(torch, "load", torch_load)
    _patches.replace(learner_class, "load", _reading_own_files(vars(learner_class)["load"]))
    load_learner = basic_train.load_learner
    _patches.replace_everywhere(load_learner, _reading_own_files(load_learner), "fastai")


def _reading_own_files(function):
    """`function` (which reads what fastai 1 wrote) loads with `weights_only=False` in this thread."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        _loading.active = True
        try:
            return function(*args, **kwargs)
        finally:
            _loading.active = False

    return wrapper


def _patch_lr_finder(lr_finder_class) -> None:
    original = lr_finder_class.on_batch_end

    def on_batch_end(self, **kwargs):
        stop = original(self, **kwargs)
        if stop is None and self.stop and distributed():
            return {"stop_epoch": True, "stop_training": True}
        return stop

    _patches.replace(lr_finder_class, "on_batch_end", on_batch_end)
