"""fastai 1.x (course-v3 API) under ddipp, run inside each rank: every patch and why.

1. `Learner.fit` adds a DDP trainer callback for the length of the fit when a process group is
   up, so `fit`, `fit_one_cycle` and `lr_find` train under DDP with no change to the user's
   code (fastai 1 only does this after an explicit `learn.to_distributed(cuda_id)`). The
   callback is fastai's own `DistributedTrainer` (each rank reads its own shard through a
   distributed sampler, the recorder is silent on ranks other than 0), except that on CPU
   ranks the model is wrapped without `device_ids` (fastai 1 passes a CUDA device).
2. `LRFinder.on_batch_end` decides whether the loss diverged on the loss averaged over the
   ranks: fastai 1 lets each rank decide on its own shard's loss, so one rank could stop
   while the others wait for it in a collective.
3. `Learner.load` waits at a barrier first: rank 0 alone writes in `save`, and without it the
   other ranks could read a file that is still being written (fastai 2 has this barrier).
   It also loads with `weights_only=False`: fastai 1 saves its own pickled optimizer state
   and predates torch's `weights_only=True` default, so `load` (and `lr_find`, which saves
   and reloads the model) failed with an `UnpicklingError` on this torch. This applies to
   the files `learn.save` wrote, within `learn.load` only.
4. `untar_data` and `download_data` run on rank 0 first; the other ranks then find the
   archive in place.
5. `%matplotlib inline` on every rank, so `recorder.plot()` and `show_batch` figures come back.

`save` and `export` need no patch: fastai 1 already writes them on rank 0 only; its metrics
average over the ranks.
"""

from __future__ import annotations

import os
import warnings

from .rankside import Patches, barrier, distributed, global_mean, on_gpu, rank0_first, show_figures_inline

_patches = Patches()
# torch.load's switch for `weights_only=False` where the caller (fastai 1) passes nothing.
FULL_UNPICKLING = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


def apply_patches() -> None:
    """Apply every patch (once); called on each rank when the group enters `patched`."""
    if _patches:
        return
    import fastai.datasets as datasets
    import fastai.distributed as fastai_distributed
    from fastai.basic_train import Learner
    from fastai.callbacks.lr_finder import LRFinder

    trainer_class = _cpu_capable_trainer(fastai_distributed.DistributedTrainer)
    _patch_fit(Learner, fastai_distributed.DistributedTrainer, trainer_class)
    _patch_load(Learner)
    _patch_lr_finder(LRFinder)
    for name in ("untar_data", "download_data"):
        original = getattr(datasets, name)
        _patches.replace_everywhere(original, rank0_first(original), "fastai")
    show_figures_inline()


def undo_patches() -> None:
    """Put every patched attribute back; called on each rank when the group is torn down."""
    _patches.undo()


def _cpu_capable_trainer(distributed_trainer):
    from torch.nn.parallel import DistributedDataParallel

    class DdippDistributedTrainer(distributed_trainer):
        """fastai 1's `DistributedTrainer`, wrapping the model for the group's device."""

        def on_train_begin(self, **kwargs):
            import torch

            if on_gpu():
                device = torch.cuda.current_device()
                self.learn.model = DistributedDataParallel(
                    self.model, device_ids=[device], output_device=device
                )
            else:
                self.learn.model = DistributedDataParallel(self.model)
            # The rest of fastai's on_train_begin, which expects the model wrapped already.
            data = self.data
            shuffle = data.train_dl.init_kwargs["shuffle"] if hasattr(data.train_dl, "init_kwargs") else True
            self.old_train_dl, data.train_dl, self.train_sampler = self._change_dl(data.train_dl, shuffle)
            if getattr(data, "valid_dl", None) is not None:
                self.old_valid_dl, data.valid_dl, self.valid_sampler = self._change_dl(data.valid_dl, shuffle)
            self.rank = torch.distributed.get_rank()
            self.recorder.silent = self.rank != 0

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


def _patch_load(learner_class) -> None:
    original_load = learner_class.load

    def load(self, *args, **kwargs):
        barrier()
        previous = os.environ.get(FULL_UNPICKLING)
        os.environ[FULL_UNPICKLING] = "1"
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=f".*{FULL_UNPICKLING}.*")
                return original_load(self, *args, **kwargs)
        finally:
            if previous is None:
                os.environ.pop(FULL_UNPICKLING, None)
            else:
                os.environ[FULL_UNPICKLING] = previous

    load.__doc__ = original_load.__doc__
    _patches.replace(learner_class, "load", load)


def _patch_lr_finder(lr_finder_class) -> None:
    original = lr_finder_class.on_batch_end

    def on_batch_end(self, iteration, smooth_loss, **kwargs):
        return original(self, iteration, global_mean(smooth_loss), **kwargs)

    _patches.replace(lr_finder_class, "on_batch_end", on_batch_end)
