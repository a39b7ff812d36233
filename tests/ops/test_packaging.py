"""The wheel carries what the daemon needs at run time besides code: templates, migrations, data
(docs/operations.md: packaging). Built from a copy of the tree (setuptools' build/ must not leak stale files)
and imported from where it was installed, not from this checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        if (ROOT / name).exists():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "mailgateway", src / "mailgateway",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = out.glob("mailgateway-*.whl")
    return whl


def test_wheel_has_templates_migrations_and_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("mailgateway/py.typed", "mailgateway/migrations/env.py",
                     "mailgateway/migrations/script.py.mako", "mailgateway/migrations/versions/0001_initial.py",
                     "mailgateway/templates/acknowledgement.txt.j2", "mailgateway/templates/acknowledgement.html.j2",
                     "mailgateway/data/regions.csv"):
        assert required in names, required
    version = wheel.name.split("-")[1]
    entry_points = zipfile.ZipFile(wheel).read(f"mailgateway-{version}.dist-info/entry_points.txt")
    assert b"mailgateway = mailgateway.cli:main" in entry_points


def test_installed_wheel_migrates_and_renders_outside_the_checkout(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    script = (
        "import sys, mailgateway\n"
        f"assert mailgateway.__file__.startswith({str(site)!r}), mailgateway.__file__\n"
        "from mailgateway.store.engine import upgrade, make_engine, current_revision, head_revision\n"
        f"url = 'sqlite:///{tmp_path / 'w.db'}'\n"
        "upgrade(url)\n"
        "assert current_revision(make_engine(url)) == head_revision()\n"
        "from mailgateway.dispatch.render import Renderer\n"
        "assert Renderer(None).check() == []\n"
        "print('ok')\n"
    )
    run = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r})\n" + script],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
