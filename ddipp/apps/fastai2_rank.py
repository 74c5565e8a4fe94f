"""fastai 2.x under ddipp, run inside each rank: every patch, what it fixes and why.

1. `Learner.fit` runs inside `Learner.distrib_ctx` when a process group is up, so `fit`,
   `fit_one_cycle`, `fine_tune` and `lr_find` train under DDP with no change to the user's
   code: the model is wrapped in DistributedDataParallel, every `DataLoader` in a
   `DistributedDL` (each rank reads its own shard of the data), and progress bars are removed
   on ranks other than 0. On CPU ranks it passes `cpu=True` to accelerate (which otherwise
   picks no distribution and leaves the model unwrapped) and `sync_bn=False`
   (`SyncBatchNorm` only works with GPU modules).
2. `DistributedDL._broadcast` calls `.cuda()` unconditionally; it now puts the indices on the
   device the backend needs (CPU for gloo).
3. `LRFinder`: each rank made its own temporary folder for the saved model, but only rank 0
   saves, so the other ranks skipped the reload while rank 0 waited for them in
   `Learner.load`'s barrier (a hang). Rank 0 now chooses the folder for all, every rank
   reloads the saved weights, and the folder is removed once all have. Its stop test (loss
   diverging) now uses the loss averaged over the ranks, so all ranks stop at the same batch
   instead of one stopping while the others wait in a collective.
4. `untar_data` and `download_data` run on rank 0 first; the other ranks then find the
   archive in place (no concurrent downloads into the same file).
5. accelerate keeps its state in a per-process singleton: it is reset when the patches are
   applied, so it picks up this group's device choice.
6. `maybe_gather` (used by `get_preds`, `validate`, `show_results`) gathers predictions from
   every rank whenever `WORLD_SIZE` > 1. Outside a distributed fit each rank already holds the
   whole data, so that doubled the predictions (and broke `show_results`); it now gathers only
   during a distributed fit, when each rank holds a shard.
7. `%matplotlib inline` on every rank, so `lr_find`, `plot_loss` and `show_batch` figures come
   back as images (the notebook shows rank 0's).

`save`, `export` and the metrics need no patch: fastai 2 already saves and exports on rank 0
only, and gathers predictions from every rank before computing metrics.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .rankside import (
    Patches,
    any_rank,
    barrier,
    collective_device,
    distributed,
    from_rank0,
    global_mean,
    on_gpu,
    rank,
    rank0_first,
    show_figures_inline,
)

_patches = Patches()
# Distributed fits under way on this rank (fit can nest: fine_tune, lr_find inside a fit).
_sharded_fits = 0


def apply_patches() -> None:
    """Apply every patch (once); called on each rank when the group enters `patched`."""
    if _patches:
        return
    import fastai.data.external as external
    import fastai.distributed as fastai_distributed
    import fastai.torch_core as torch_core
    from accelerate.state import AcceleratorState
    from fastai.callback.schedule import LRFinder
    from fastai.learner import Learner

    AcceleratorState._reset_state(reset_partial_state=True)
    _patch_fit(Learner, fastai_distributed.DistributedTrainer)
    _patch_broadcast(fastai_distributed.DistributedDL)
    _patch_lr_finder(LRFinder)
    _patch_gather(torch_core)
    for name in ("untar_data", "download_data"):
        original = getattr(external, name, None)
        if original is not None:
            _patches.replace_everywhere(original, rank0_first(original), "fastai")
    show_figures_inline()


def undo_patches() -> None:
    """Put every patched attribute back; called on each rank when the group is torn down."""
    _patches.undo()


def _patch_fit(learner_class, trainer_class) -> None:
    original_fit = learner_class.fit

    def fit(self, *args, **kwargs):
        if not distributed() or any(isinstance(cb, trainer_class) for cb in self.cbs):
            return original_fit(self, *args, **kwargs)
        global _sharded_fits
        _sharded_fits += 1
        try:
            with self.distrib_ctx(sync_bn=on_gpu(), cpu=not on_gpu()):
                return original_fit(self, *args, **kwargs)
        finally:
            _sharded_fits -= 1

    fit.__doc__ = original_fit.__doc__
    _patches.replace(learner_class, "fit", fit)


def _patch_gather(torch_core) -> None:
    original = torch_core.maybe_gather

    def maybe_gather(x, axis=0):
        return original(x, axis) if _sharded_fits else x

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
    from fastai.callback.core import CancelFitException
    from fastai.callback.schedule import ParamScheduler

    original_before_fit = lr_finder_class.before_fit
    original_after_batch = lr_finder_class.after_batch
    original_after_fit = lr_finder_class.after_fit

    def before_fit(self):
        if not distributed():
            return original_before_fit(self)
        ParamScheduler.before_fit(self)
        path = self.path / self.model_dir
        path.mkdir(parents=True, exist_ok=True)
        self.tmp_d = tempfile.TemporaryDirectory(dir=path) if rank() == 0 else None
        self.tmp_p = from_rank0(Path(self.tmp_d.name).stem if self.tmp_d is not None else None)
        self.learn.save(f"{self.tmp_p}/_tmp")  # rank 0 writes; the others wait in `load`
        self.best_loss = float("inf")

    def after_batch(self):
        if not distributed():
            return original_after_batch(self)
        ParamScheduler.after_batch(self)
        loss = global_mean(self.smooth_loss)
        if loss < self.best_loss:
            self.best_loss = loss
        if any_rank(bool(loss > 4 * self.best_loss and self.stop_div)) or self.train_iter >= self.num_it:
            raise CancelFitException()

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
    _patches.replace(lr_finder_class, "after_batch", after_batch)
    _patches.replace(lr_finder_class, "after_fit", after_fit)
