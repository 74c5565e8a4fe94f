"""Apps: what ddipp sets up on the ranks for a client library: imports, and patches applied on
entering `patched` and undone when the group is torn down (`ddipp/apps/*_rank.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata

from ..errors import DdippError

APP_MISSING = (
    "app {app!r} needs {library} {major}.x, but {found}. Install it with: pip install {requirement}{note}"
)
UNKNOWN_APP = "unknown app {app!r}: choose one of {choices}"
SEPARATE_ENV = " (in its own environment: fastai 1 and fastai 2 share the import name 'fastai')"
# Bound in every rank's namespace by the apps that patch: `with rank0_first():` / `@rank0_first`.
RANK0_FIRST = "from ddipp.apps.hoststep import rank0_first\n"
ALSO_NEEDS = (
    "app {app!r} also needs {library}, which is not installed. Install it with: pip install {library}"
)


class AppUnavailable(DdippError):
    """The app's library is missing or of the wrong major version."""


@dataclass(frozen=True, slots=True)
class App:
    """A client library's contract: what to check here and what to run on every rank."""

    name: str
    summary: str
    rank_imports: str = ""  # code run in every rank's namespace
    rank_module: str | None = None  # a module with apply_patches() and undo_patches()
    library: str | None = None
    major: int | None = None
    requirement: str = ""
    also_needs: tuple[str, ...] = ()

    @property
    def rank_setup(self) -> str:
        """Code run on every rank on entering `patched` (binds no name but the imports')."""
        patches = (
            f"__import__({self.rank_module!r}, fromlist=['_']).apply_patches()\n" if self.rank_module else ""
        )
        return self.rank_imports + patches

    @property
    def rank_teardown(self) -> str:
        """Code run on every rank when the group is torn down."""
        if not self.rank_module:
            return ""
        return f"__import__({self.rank_module!r}, fromlist=['_']).undo_patches()\n"

    def check_available(self) -> None:
        """Raise `AppUnavailable` with the install hint unless the library fits."""
        if self.library is None:
            return
        version = installed_version(self.library)
        if version is not None and _major(version) == self.major:
            for library in self.also_needs:
                if installed_version(library) is None:
                    raise AppUnavailable(ALSO_NEEDS.format(app=self.name, library=library))
            return
        found = "it is not installed" if version is None else f"{self.library} {version} is installed"
        raise AppUnavailable(
            APP_MISSING.format(
                app=self.name,
                library=self.library,
                major=self.major,
                found=found,
                requirement=self.requirement,
                note=SEPARATE_ENV if self.library == "fastai" else "",
            )
        )


APPS: dict[str, App] = {
    app.name: app
    for app in (
        App(
            "fastai_v1",
            "fastai 1.x (course-v3 API): Learner.fit trains under DDP; lr_find, metrics, downloads and "
            "shell escapes as in one process",
            rank_imports=RANK0_FIRST,
            rank_module="ddipp.apps.fastai1_rank",
            library="fastai",
            major=1,
            requirement="fastai==1.0.61 pandas==1.5.3 'numpy<2' 'setuptools>=77.0.3,<81' 'spacy>=3,<4'",
        ),
        App(
            "fastai",
            "fastai 2.x: Learner.fit trains under DDP (distrib_ctx), CPU/gloo; lr_find, metrics, downloads "
            "and shell escapes as in one process",
            rank_imports=RANK0_FIRST,
            rank_module="ddipp.apps.fastai2_rank",
            library="fastai",
            major=2,
            requirement="'fastai>=2.7,<3' accelerate",
            also_needs=("accelerate",),
        ),
        App(
            "torch",
            "plain PyTorch: torch and torch.distributed (as dist) imported; shell escapes run once per host",
            rank_imports="import torch\nimport torch.distributed as dist\n" + RANK0_FIRST,
            rank_module="ddipp.apps.hoststep",
        ),
        App("none", "nothing imported or patched on the ranks"),
    )
}


def installed_version(distribution: str) -> str | None:
    """The installed version of `distribution`, without importing it; None if absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def default_app() -> str:
    """The app matching the installed fastai major version, else `torch`."""
    version = installed_version("fastai")
    if version is None:
        return "torch"
    return {1: "fastai_v1", 2: "fastai"}.get(_major(version), "torch")


def get_app(name: str) -> App:
    """The app called `name`, checked to be usable here."""
    try:
        app = APPS[name]
    except KeyError:
        raise AppUnavailable(UNKNOWN_APP.format(app=name, choices=", ".join(APPS))) from None
    app.check_available()
    return app


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])
