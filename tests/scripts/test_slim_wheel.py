"""A wheel slimmed of a folder installs with pip and imports, without that folder."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from slim_wheel import slim  # noqa: E402


def _wheel(folder: Path) -> Path:
    info = "pkg-0.1.dist-info"
    files = {
        "pkg/__init__.py": "VALUE = 1\n",
        "pkg/jars/big.jar": "x" * 10_000,
        "pkg/jars/other.jar": "y" * 10_000,
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: pkg\nVersion: 0.1\n",
        f"{info}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    folder.mkdir(parents=True)
    path = folder / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return path


def test_the_slimmed_wheel_installs_and_imports_without_the_folder(tmp_path):
    wheel = _wheel(tmp_path / "in")
    out, left_out = slim(wheel, ["pkg/jars/"], tmp_path / "out")
    assert out.name == wheel.name and sorted(left_out) == ["pkg/jars/big.jar", "pkg/jars/other.jar"]
    record = zipfile.ZipFile(out).read("pkg-0.1.dist-info/RECORD").decode()
    assert "jars" not in record and "pkg/__init__.py" in record
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--target",
         str(site), str(out)], check=True,
    )  # fmt: skip
    assert (site / "pkg" / "__init__.py").is_file() and not (site / "pkg" / "jars").exists()
    done = subprocess.run([sys.executable, "-c", "import pkg; print(pkg.VALUE)"],
                          cwd=site, capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip() == "1"


def test_a_prefix_that_matches_nothing_is_refused_by_name(tmp_path):
    wheel = _wheel(tmp_path / "in")
    with pytest.raises(SystemExit, match=r"no file under \['pkg/java/'\]"):
        slim(wheel, ["pkg/java/"], tmp_path / "out")
    assert not (tmp_path / "out" / wheel.name).exists()
