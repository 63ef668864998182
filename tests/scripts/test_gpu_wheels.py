"""What travels to a GPU machine: the image's packages and torch never, every other wheel in
exactly one batch under the limit, wheels sharing a folder together (offline, fake wheels)."""

import json
import random
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
from gpu_wheels import (  # noqa: E402
    IMAGE_LIST,
    choose,
    constraints,
    lock_pins,
    pack,
    read_names,
    table,
    top_levels,
    write,
)

KIB = 1024


def _wheel(folder: Path, name: str, size: int, top: str | None = None) -> Path:
    """A wheel file of about ``size`` bytes (stored random bytes) whose package is ``top``."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = name.replace("-", "_")
    path = folder / f"{dist}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{top or dist}/blob.bin", random.Random(name).randbytes(size))
        z.writestr(f"{dist}-1.0.dist-info/METADATA", f"Name: {name}\nVersion: 1.0\n")
        z.writestr(f"{dist}-1.0.data/scripts/{dist}", "#!python\n")
    return path


def test_the_image_list_is_normalized_names_with_torch_and_cuda_in_it():
    text = IMAGE_LIST.read_text()
    names = read_names(IMAGE_LIST)
    assert text.startswith("#") and "KINDS.md" in text.split("\n\n")[0]
    assert {"torch", "triton", "numpy", "nvidia-cublas"} <= names
    assert not {"prefect", "ray", "mlflow", "polars", "s3fs"} & names
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    assert sorted(lines) == sorted(names) and len(lines) == len(set(lines))


def test_image_packages_torch_and_nvidia_are_dropped_the_rest_kept(tmp_path):
    names = ["prefect", "ray", "numpy", "torch", "triton", "nvidia-cudnn-cu13", "openvino",
             "Typing_Extensions", "mlflow-skinny"]  # fmt: skip
    wheels = [_wheel(tmp_path, n, KIB) for n in names]
    # torch and nvidia-* go even when the image list forgets them
    kept, dropped = choose(wheels, {"numpy", "typing-extensions"}, {"openvino"})
    assert sorted(w.name.split("-")[0] for w in kept) == ["mlflow_skinny", "prefect", "ray"]
    assert set(dropped) | {w.name for w in kept} == {w.name for w in wheels}
    assert not set(dropped) & {w.name for w in kept}
    assert dropped["torch-1.0-py3-none-any.whl"].startswith("never carried")
    assert dropped["nvidia_cudnn_cu13-1.0-py3-none-any.whl"].startswith("never carried")
    assert dropped["Typing_Extensions-1.0-py3-none-any.whl"] == "in the GPU image"
    assert dropped["openvino-1.0-py3-none-any.whl"] == "--exclude"


def test_batches_hold_every_wheel_once_under_the_limit_and_shared_folders_together(tmp_path):
    rng = random.Random(0)
    wheels = [_wheel(tmp_path, f"pkg{i}", rng.randrange(1, 60) * KIB) for i in range(40)]
    wheels += [_wheel(tmp_path, n, 20 * KIB, top="mlflow") for n in ("mlflow", "mlflow-skinny")]
    wheels.append(_wheel(tmp_path, "big", 99 * KIB))
    sizes = {w: w.stat().st_size for w in wheels}
    tops = {w: top_levels(w) for w in wheels}
    assert tops[wheels[-2]] == {"mlflow"}  # the scripts' folder is not a shared name
    limit = 100 * KIB
    batches = pack(sizes, limit, tops)
    placed = [w for b in batches for w in b]
    assert sorted(placed) == sorted(wheels)
    assert all(sum(sizes[w] for w in b) <= limit for b in batches)
    assert any({wheels[-3], wheels[-2]} <= set(b) for b in batches)
    # first fit: no two batches would fit in one
    totals = [sum(sizes[w] for w in b) for b in batches]
    assert all(a + b > limit for i, a in enumerate(totals) for b in totals[i + 1 :])


def test_a_wheel_or_a_folder_group_over_the_limit_is_refused_by_name(tmp_path):
    small = _wheel(tmp_path, "small", KIB)
    huge = _wheel(tmp_path, "huge", 120 * KIB)
    sizes = {w: w.stat().st_size for w in (small, huge)}
    with pytest.raises(SystemExit, match=r"huge-1\.0-py3-none-any\.whl \(0\.1 MiB\)"):
        pack(sizes, 100 * KIB, {w: top_levels(w) for w in sizes})
    halves = [_wheel(tmp_path, n, 60 * KIB, top="shared") for n in ("left", "right")]
    sizes = {w: w.stat().st_size for w in halves}
    with pytest.raises(SystemExit, match=r"left-1\.0.*\+ right-1\.0.*one top-level folder"):
        pack(sizes, 100 * KIB, {w: top_levels(w) for w in halves})


def test_write_moves_the_batches_into_place_and_records_them(tmp_path):
    out = tmp_path / "out"
    (out / "batch-7").mkdir(parents=True)  # an earlier run's batch goes
    wheels = [_wheel(tmp_path / "dl", f"pkg{i}", 40 * KIB) for i in range(3)]
    sizes = {w: w.stat().st_size for w in wheels}
    report = write(out, pack(sizes, 100 * KIB, {w: top_levels(w) for w in wheels}), sizes, {})
    assert sorted(p.name for p in out.iterdir()) == ["batch-1", "batch-2", "batches.json"]
    assert json.loads((out / "batches.json").read_text()) == report
    on_disk = {p.name for p in out.glob("batch-*/*.whl")}
    assert on_disk == {w.name for w in wheels} == {f for r in report["batches"] for f in r["files"]}
    assert report["total"]["files"] == 3
    assert table(report).splitlines()[-1].split()[:2] == ["total", "3"]


def test_constraints_pin_the_lock_and_send_the_image_and_torch_to_stubs():
    pins = lock_pins("prefect==3.8.8\n    # via x\ntorch==2.13.0+cpu\nnumpy==2.4.6\n")
    assert pins == {"prefect": "3.8.8", "torch": "2.13.0+cpu", "numpy": "2.4.6"}
    assert constraints(pins, {"numpy"}).splitlines() == [
        "numpy==2.4.6+image",
        "prefect==3.8.8",
        "torch==2.13.0+image",
    ]
