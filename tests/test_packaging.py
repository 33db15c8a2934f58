"""The distributions: what the wheel and the sdist carry, and that both work once installed."""

from __future__ import annotations

import email
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import coordinator
from coordinator._migrations import available_migrations

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

#: A markdown link whose target is not an absolute URL or an anchor: dead on PyPI.
RELATIVE_LINK = re.compile(r"\]\((?!https?://|#)[^)]+\)")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel and the sdist, built from the work tree without network access."""
    out = tmp_path_factory.mktemp("dist")
    for target in ("wheel", "sdist"):
        subprocess.run(
            [sys.executable, "-m", "hatchling", "build", "-t", target, "-d", str(out)],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    return out


def the(dist: Path, pattern: str) -> Path:
    (path,) = dist.glob(pattern)
    return path


def test_the_wheel_carries_the_sql_files_the_web_view_and_the_license(dist: Path) -> None:
    names = zipfile.ZipFile(the(dist, "pg_coordinator-*.whl")).namelist()
    for migration in available_migrations():
        assert f"coordinator/migrations/{migration.name}" in names
    for static in ("index.html", "view.js", "view.css"):
        assert f"coordinator/integrations/web/{static}" in names
    assert "coordinator/sql/least_privilege.sql" in names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)


def test_the_metadata_has_what_an_index_shows(dist: Path) -> None:
    """Classifiers, URLs, keywords, and a long description whose links work off GitHub."""
    wheel = zipfile.ZipFile(the(dist, "pg_coordinator-*.whl"))
    (metadata_name,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.message_from_bytes(wheel.read(metadata_name))
    assert metadata["License-Expression"] == "MIT"
    assert "Topic :: Database" in metadata.get_all("Classifier", [])
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL", []))
    assert urls["Source"] == "https://github.com/pg-coordinator/pg-coordinator"
    assert "leader election" in metadata["Keywords"]
    description = metadata.get_payload()
    assert isinstance(description, str)
    assert "# pg-coordinator" in description
    assert RELATIVE_LINK.findall(description) == []
    assert "](https://github.com/pg-coordinator/pg-coordinator/blob/main/docs/" in description
    # Development dependencies are groups, not extras a user could install.
    assert set(metadata.get_all("Provides-Extra", [])) == {
        *("demo", "http", "fastapi", "psycopg", "sqlalchemy", "otel", "testing")
    }


def test_pip_installs_the_built_wheel_and_its_command_runs(dist: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet"),
            *("--target", str(target), str(the(dist, "pg_coordinator-*.whl"))),
        ],
        check=True,
        capture_output=True,
    )
    # The dependencies come from this environment; the package from the installed wheel.
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}
    script = (
        "import coordinator, coordinator.integrations.http as http\n"
        "from coordinator._migrations import available_migrations\n"
        "print(coordinator.__file__)\n"
        "print(len(available_migrations()))\n"
        "print(http.WEB_ROOT.joinpath('index.html').is_file())\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    where, migrations, page = result.stdout.split()
    assert where.startswith(str(target))
    assert int(migrations) == len(available_migrations())
    assert page == "True"
    command = subprocess.run(
        [str(target / "bin" / "coordinator"), "--help"],
        capture_output=True,
        text=True,
        env={**env, "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"},
        cwd=tmp_path,
    )
    assert command.returncode == 0, command.stderr
    assert "probe" in command.stdout


def pytest_in(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        capture_output=True,
        text=True,
    )


def counted(collect_only: str) -> str:
    """The "N tests collected" of ``pytest --collect-only -q``, without the time it took."""
    return collect_only.splitlines()[-1].split(" in ")[0]


def test_the_tests_run_from_the_unpacked_sdist(dist: Path, tmp_path: Path) -> None:
    """Every test module imports from the sdist alone (chaos/, examples/ and all), and some run."""
    with tarfile.open(the(dist, "pg_coordinator-*.tar.gz")) as sdist:
        sdist.extractall(tmp_path, filter="data")
    (unpacked,) = tmp_path.glob("pg_coordinator-*")
    collected = pytest_in(unpacked, "--collect-only")
    assert collected.returncode == 0, collected.stdout + collected.stderr
    assert counted(collected.stdout) == counted(pytest_in(ROOT, "--collect-only").stdout)
    quick = pytest_in(unpacked, "tests/test_manifests.py")
    assert quick.returncode == 0, quick.stdout + quick.stderr


def test_every_public_name_is_found_where_the_package_says() -> None:
    """The package imports its names on first use: each one in __all__ resolves, none is extra."""
    script = (
        "import coordinator\n"
        "assert sorted(coordinator._HOMES) == sorted(coordinator.__all__)\n"
        "for name in coordinator.__all__:\n"
        "    getattr(coordinator, name)\n"
        "print(len(coordinator.__all__))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = coordinator.Nope  # type: ignore[attr-defined]
