"""What a person sees: notebooks run through JupyterLab's own UI in headless chromium (`--run-browser`).

nbclient checks the messages ddipp sends; these tests check what the page shows of them. Bounds
on time are there only to tell a hang from a result. The screenshots the docs show are taken here
(`make docs-images` keeps them in docs/images).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from ddipp.apps import installed_version
from tests.browser import Browser, CellView, JupyterLab, NotebookPage, find_chromium, write_notebook
from tests.processes import TAG_VARIABLE, files_left, tagged_processes

pytestmark = pytest.mark.browser

NEEDS_CHROMIUM = "needs chromium: apt-get install chromium (`make test` installs it when run as root)"
NEEDS_EXTRA = "needs JupyterLab and Playwright: pip install -e '.[browser]' (make test installs them)"
NEEDS_FASTAI2 = "needs fastai 2.x (found {found}): it runs in .venv"
# Everything a notebook's kernel started must be gone this long after the kernel shuts down.
CLEAN_UP_S = 15
# Long enough for a fastai group to start on a busy 2-core machine; a hang takes longer.
CELL_S = 240
# The interrupted cell would sleep 120 s: ending within this bound is a result, not a hang.
INTERRUPT_BOUND_S = 10
EPOCHS = 5

START = "%load_ext ddipp\n%makedip -n 2 -a {app}"
FASTAI_LESSON = [
    START.format(app="fastai") + "\n%autodip on",
    "%matplotlib inline\nfrom fastai.tabular.all import *\nfrom sklearn.datasets import load_breast_cancer",
    "cancer = load_breast_cancer(as_frame=True)\n"
    "df = cancer.frame.assign(target=cancer.frame.target.map({0: 'malignant', 1: 'benign'}))\n"
    "splits = RandomSplitter(valid_pct=0.2, seed=42)(range_of(df))\n"
    "dls = TabularDataLoaders.from_df(df, procs=[Normalize], cont_names=list(cancer.feature_names),\n"
    "                                 y_names='target', valid_idx=splits[1], bs=8)\n"
    "set_seed(42)\n"
    "learn = tabular_learner(dls, layers=[64, 32], metrics=accuracy)",
    "learn.lr_find()",
    f"learn.fit_one_cycle({EPOCHS}, 1e-2)",
    "fig, ax = plt.subplots(figsize=(5, 3))\n"
    "ax.plot(L(learn.recorder.values).itemgot(2))\n"
    "ax.set(xlabel='epoch', ylabel='accuracy')\n"
    "plt.show()",
    "%dipstatus",
]
LR_FIND, FIT, FIGURE, STATUS = 3, 4, 5, 6
# The same notebook twice: errors on a rank, and errors here. Run All must treat them alike.
EXPECTED = ["raises-exception"]
RANK_ERRORS = [
    START.format(app="torch"),
    ("%%dip\nx = torch.ones(2 + dist.get_rank())\nx @ torch.ones(2)", EXPECTED),
    "%%dip\nprint('after an expected error')",
    "%%dip\nif dist.get_rank() == 1:\n    raise ValueError('rank 1 alone')",
    "%%dip\nprint('after an unexpected error')",
]
LOCAL_ERRORS = [
    "import torch",
    ("x = torch.ones(3)\nx @ torch.ones(2)", EXPECTED),
    "print('after an expected error')",
    "raise ValueError('here alone')",
    "print('after an unexpected error')",
]
INTERRUPTED = [
    START.format(app="torch"),
    "%%dip\nimport time\nprint('sleeping on rank', dist.get_rank(), flush=True)\ntime.sleep(120)",
    "%%dip\nt = torch.ones(1)\ndist.all_reduce(t)\nprint('the ranks answer', t.item())",
]
RESTARTED = [START.format(app="torch"), "%dipstatus"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[JupyterLab, str]]:
    """A JupyterLab server, and the tag that its processes (kernels and ranks too) carry."""
    if importlib.util.find_spec("playwright") is None or importlib.util.find_spec("jupyterlab") is None:
        pytest.skip(NEEDS_EXTRA)
    if find_chromium() is None:
        pytest.skip(NEEDS_CHROMIUM)
    tag = uuid.uuid4().hex
    folder = tmp_path_factory.mktemp("lab")
    home = folder / "home"
    (home / "tmp").mkdir(parents=True)  # the kernels' own (see `notebook`)
    env = dict(os.environ, **{TAG_VARIABLE: tag}, TMPDIR=str(home / "tmp"), IPYTHONDIR=str(home / "ipython"))
    server = JupyterLab(folder / "notebooks", home, env=env)
    server.start()
    try:
        yield server, tag
    finally:
        server.stop()
        _check_nothing_left(tag, keep=set())


@pytest.fixture(scope="module")
def browser(lab) -> Iterator[Browser]:
    """Headless chromium; it and Playwright's driver carry a tag of their own."""
    tag = uuid.uuid4().hex
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TAG_VARIABLE, tag)  # inherited by the driver, and by chromium from it
        started = Browser(find_chromium())
    try:
        yield started
    finally:
        started.close()
        _check_nothing_left(tag, keep=set())


@pytest.fixture(scope="module")
def screenshots(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: `--screenshots DIR` (docs/images for the docs), else a temporary folder."""
    chosen = request.config.getoption("screenshots")
    folder = Path(chosen) if chosen else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def notebook(lab, browser: Browser, name: str, cells: Sequence) -> Iterator[NotebookPage]:
    """`cells` as a notebook open in the lab; afterwards its kernel and all it started are gone."""
    server, tag = lab
    write_notebook(server.root / name, cells)
    page = browser.open(server, name)
    try:
        yield page
    finally:
        page.close()
        server.shut_down_kernels()
        _check_nothing_left(tag, keep={server.pid})
        assert files_left(server.home / "tmp", server.home / "ipython") == []


def _check_nothing_left(tag: str, keep: set[int]) -> None:
    """Within CLEAN_UP_S, no tagged process but those in `keep` may be alive.

    Any that are get SIGKILL by pid before the test fails, so that they cannot disturb later tests.
    """
    deadline = time.monotonic() + CLEAN_UP_S
    while True:
        left = [p for p in tagged_processes(tag) if p.pid not in keep]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    described = []
    for process in left:
        with contextlib.suppress(psutil.NoSuchProcess):
            described.append((process.pid, process.cmdline()))
            process.kill()
    assert left == [], described


# --- fastai: a lesson under %autodip, run with Run All ---------------------------------------


@dataclass(frozen=True, slots=True)
class LessonRun:
    """What the fastai lesson's cells showed: at the end, and the fit cell after every change."""

    cells: list[CellView]
    fit_seen: list[CellView]


@pytest.fixture(scope="module")
def lesson(lab, browser: Browser, screenshots: Path) -> LessonRun:
    """Run All on the lesson; its kernel and ranks are gone before the tests look at what it showed."""
    found = installed_version("fastai")
    if found is None or not found.startswith("2."):
        pytest.skip(NEEDS_FASTAI2.format(found=found))
    with notebook(lab, browser, "fastai_lesson.ipynb", FASTAI_LESSON) as page:
        page.watch(FIT)
        page.run_all()
        if _mid_fit(page.wait_for(FIT, "train or end", lambda view: _mid_fit(view) or view.ran, CELL_S)):
            page.screenshot(FIT, screenshots / "fit-in-progress.png")
        cells = [page.wait_until_ran(index, CELL_S) for index in range(len(FASTAI_LESSON))]
        page.select(0)  # the active cell has a toolbar and a marker: keep them out of the pictures
        for index, name in ((FIT, "fit-finished"), (LR_FIND, "lr-find"), (STATUS, "dipstatus")):
            page.screenshot(index, screenshots / f"{name}.png")
        fit_seen = page.watched(FIT)
    return LessonRun(cells, fit_seen)


def _mid_fit(view: CellView) -> bool:
    """Training, with two epochs' metrics in the table under the bar."""
    return not view.ran and bool(view.progress) and any(len(rows) >= 3 for rows in view.tables)


def test_the_fit_updates_one_progress_bar_in_place_and_keeps_the_metrics_table_once(lesson):
    training = [view for view in lesson.fit_seen if view.progress]
    assert training, "the fit cell never showed a progress bar"
    assert max(len(view.outputs) for view in lesson.fit_seen) == 1
    assert {len(view.progress) for view in training} <= {1, 2}
    epochs_shown = {view.progress[0] for view in training}
    assert len(epochs_shown) >= 3, epochs_shown
    final = lesson.cells[FIT]
    assert len(final.outputs) == 1 and len(final.tables) == 1, final
    header, *rows = final.tables[0]
    assert "accuracy" in header and [row.split()[0] for row in rows] == [str(e) for e in range(EPOCHS)]


def test_a_figure_and_the_lr_find_plot_show_as_one_image_each(lesson):
    assert lesson.cells[FIGURE].images == 1, lesson.cells[FIGURE]
    assert lesson.cells[LR_FIND].images == 1, lesson.cells[LR_FIND]
    assert "SuggestedLRs" in lesson.cells[LR_FIND].text()


def test_dipstatus_renders_as_a_table_of_the_ranks(lesson):
    status = lesson.cells[STATUS]
    assert len(status.tables) == 1, status
    header, *rows = status.tables[0]
    assert header.split() == ["rank", "engine", "pid", "host", "device", "alive", "memory"]
    assert [row.split()[0] for row in rows] == ["0", "1"]
    assert "patched" in status.text() and "autodip is on" in status.text()


# --- errors, interrupts, restarts ------------------------------------------------------------


def test_a_rank_error_is_one_error_box_and_run_all_goes_on_or_stops_as_after_a_local_error(
    lab, browser, screenshots
):
    outcomes = {}
    for name, cells in (("rank_errors.ipynb", RANK_ERRORS), ("local_errors.ipynb", LOCAL_ERRORS)):
        with notebook(lab, browser, name, cells) as page:
            page.run_all()
            page.wait_until_ran(3, CELL_S)
            # A cell that Run All still sends would run within this quiet second.
            page.wait_until_kernel_idle(CELL_S, quiet=1.0)
            outcomes[name] = [page.view(index) for index in range(len(cells))]
            if name == "rank_errors.ipynb":
                page.select(0)
                page.screenshot(1, screenshots / "rank-error.png")
    ranks, local = outcomes["rank_errors.ipynb"], outcomes["local_errors.ipynb"]
    assert [view.ran for view in ranks] == [view.ran for view in local], (ranks, local)
    assert "after an expected error" in ranks[2].text()
    for index, says in ((1, "rank 1 raised RuntimeError"), (3, "rank 1 raised ValueError: rank 1 alone")):
        (mime, text), *others = ranks[index].outputs
        assert others == [] and mime == "application/vnd.jupyter.stderr", ranks[index]
        assert says in text, text


def test_the_toolbar_interrupt_stops_a_long_dip_cell_and_the_next_cell_runs(lab, browser):
    with notebook(lab, browser, "interrupted.ipynb", INTERRUPTED) as page:
        page.run_all()
        page.wait_for(1, "start sleeping", lambda view: "sleeping on rank 0" in view.text(), CELL_S)
        clicked = time.monotonic()
        page.interrupt()
        stopped = page.wait_until_ran(1, INTERRUPT_BOUND_S)
        print(f"the interrupted cell ended {time.monotonic() - clicked:.2f} s after the click")
        assert "KeyboardInterrupt" in stopped.text(), stopped
        page.run_cell(2)
        answered = page.wait_until_ran(2, CELL_S)
        assert "the ranks answer 2.0" in answered.text(), answered


def test_restarting_the_kernel_leaves_no_ddipp_process_behind(lab, browser):
    server, _ = lab
    with notebook(lab, browser, "restarted.ipynb", RESTARTED) as page:
        page.run_all()
        page.wait_until_ran(1, CELL_S)
        (kernel,) = psutil.Process(server.pid).children()
        started = kernel.children(recursive=True)
        assert len(started) >= 3, started  # the controller and two ranks, at least
        page.restart_kernel()
        gone, _ = psutil.wait_procs([kernel], timeout=CELL_S)
        assert gone, "the old kernel did not end"
        _wait_for_new_kernel(server.pid, kernel.pid)
        page.wait_until_kernel_idle(CELL_S)
        left = [process for process in started if _alive(process)]
        assert left == [], [(p.pid, p.cmdline()) for p in left]


def _wait_for_new_kernel(server: int, old: int) -> None:
    deadline = time.monotonic() + CELL_S
    while not [child for child in psutil.Process(server).children() if child.pid != old]:
        assert time.monotonic() < deadline, "no new kernel was started"
        time.sleep(0.05)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
