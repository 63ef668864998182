"""``python3.12 scripts/gpu_wheels.py --out .whl [--max-mib 56] [--exclude NAME ...]``: the
wheels a GPU machine needs for ``sae sweep``, in batches small enough for one call each.

The GPU machines (Python 3.12, x86-64, no internet) have torch, triton and the packages in
``scripts/gpu_image_packages.txt``; the rest of the runtime closure of pyproject.toml's
``[project.dependencies]`` must travel as wheels, at most 64 MiB a call with the repo.
Steps:

  resolve  ``pip download`` of those dependencies for cp312 manylinux x86_64, pinned by a
           constraints file built from requirements.lock. The image's packages resolve to
           empty stub wheels (version ``LOCKED+image``, no dependencies), so pip counts them
           as present and never pulls torch, triton or nvidia-* behind them.
  drop     the stubs, anything else the image has, and ``--exclude`` names
  slim     Ray without ``ray/jars/`` (scripts/slim_wheel.py)
  pack     first-fit decreasing into OUT/batch-1, OUT/batch-2, ... of at most --max-mib
           each, wheels that share a top-level folder (mlflow/ of mlflow, mlflow-skinny and
           mlflow-tracing) in one batch; a table on stdout and OUT/batches.json say the same

Run it with a Python 3.12: pip evaluates environment markers with the interpreter that
runs it. Each batch then installs there with
``bash scripts/gpu_sweep.sh --wheels OUT/batch-N --packages-only`` (see its header).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

from slim_wheel import slim

ROOT = Path(__file__).resolve().parents[1]
IMAGE_LIST = Path(__file__).with_name("gpu_image_packages.txt")
TARGET_PYTHON = (3, 12)
# The device README's list, in its order (pip prefers the earlier tag), then the glibc
# versions it names as often needed; pip matches manylinux_2_N exactly.
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    *(f"manylinux_2_{n}_x86_64" for n in (24, 31, 34, 35)),
)
SLIM = {"ray": ["ray/jars/"]}
"""Folders left out of a package's wheel: Ray's Java jar (31 MiB), which Python never loads."""
STUB_LABEL = "image"


def normalize(name: str) -> str:
    """PEP 503's form of a distribution name: ``Typing_Extensions`` -> ``typing-extensions``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def never_carried(name: str) -> bool:
    """Torch, triton and CUDA's libraries: the image's own build, gigabytes, never a wheel here."""
    return name in ("torch", "triton") or name.startswith("nvidia-")


def wheel_name(wheel: Path) -> str:
    """The normalized distribution name in a wheel's file name (``name-ver-...-tag.whl``)."""
    if wheel.suffix != ".whl" or wheel.name.count("-") < 4:
        raise SystemExit(f"{wheel.name}: not a wheel file name (name-version-python-abi-platform)")
    return normalize(wheel.name.split("-", 1)[0])


def read_names(path: Path) -> set[str]:
    """The names of a one-name-a-line file; ``#`` starts a comment."""
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {normalize(line) for line in lines if line}


def lock_pins(lock_text: str) -> dict[str, str]:
    """``{name: version}`` from requirements.lock's ``name==version`` lines."""
    pins = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;]+)", line)
        if m:
            pins[normalize(m[1])] = m[2]
    return pins


def runtime_requirements(pyproject: Path) -> list[str]:
    """``[project.dependencies]`` as written (dev extras are not the runtime's)."""
    return tomllib.loads(pyproject.read_text())["project"]["dependencies"]


def choose(wheels: Iterable[Path], image: set[str], exclude: set[str]) -> tuple[list[Path], dict]:
    """(the wheels to carry, ``{file name: why not}``) for the image's package names."""
    kept, dropped = [], {}
    for wheel in sorted(wheels):
        name = wheel_name(wheel)
        if never_carried(name):
            dropped[wheel.name] = "never carried (torch, triton, nvidia-*)"
        elif name in image:
            dropped[wheel.name] = "in the GPU image"
        elif name in exclude:
            dropped[wheel.name] = "--exclude"
        else:
            kept.append(wheel)
    return kept, dropped


def top_levels(wheel: Path) -> set[str]:
    """The names a wheel puts in a ``pip install --target`` folder, console scripts aside.

    pip replaces such a name wholesale when a later install brings it again (``--upgrade``),
    so two wheels that share one (``mlflow/`` of mlflow, mlflow-skinny and mlflow-tracing)
    must install in the same batch."""
    tops = set()
    for member in zipfile.ZipFile(wheel).namelist():
        parts = member.split("/")
        if parts[0].endswith(".data") and len(parts) > 2:
            kind, parts = parts[1], parts[2:]  # purelib, platlib and data land in the root
            if kind == "scripts":
                continue  # into bin/, which every batch's scripts replace; the sweep runs none
            if kind == "headers":
                parts = ["include", *parts]
        if not parts[0].endswith(".dist-info"):
            tops.add(parts[0])
    return tops


def groups(tops: dict[Path, set[str]]) -> list[list[Path]]:
    """The wheels, joined where they share a top-level name (transitively)."""
    owner: dict[str, int] = {}
    members: list[list[Path]] = []
    for wheel in sorted(tops):
        joined = {owner[t] for t in tops[wheel] if t in owner}
        into = min(joined, default=len(members))
        if into == len(members):
            members.append([])
        for other in sorted(joined - {into}):
            members[into] += members[other]
            members[other] = []
        members[into].append(wheel)
        for w in members[into]:
            owner.update(dict.fromkeys(tops[w], into))
    return [sorted(m) for m in members if m]


def pack(sizes: dict[Path, int], limit: int, tops: dict[Path, set[str]]) -> list[list[Path]]:
    """First-fit decreasing: batches of wheels, each at most ``limit`` bytes in all, wheels
    that share a top-level name (:func:`top_levels`) in the same one."""
    units = {tuple(g): sum(sizes[w] for w in g) for g in groups(tops)}
    over = {u: n for u, n in units.items() if n > limit}
    if over:
        named = "; ".join(
            f"{' + '.join(w.name for w in u)} ({n / 2**20:.1f} MiB"
            f"{', one top-level folder' if len(u) > 1 else ''})"
            for u, n in sorted(over.items())
        )
        raise SystemExit(
            f"over the batch limit of {limit / 2**20:.1f} MiB on its own: {named}; slim it "
            "(scripts/slim_wheel.py) or leave it out with --exclude NAME"
        )
    batches: list[list[Path]] = []
    room: list[int] = []
    for unit in sorted(units, key=lambda u: (-units[u], u)):
        i = next((i for i, left in enumerate(room) if units[unit] <= left), len(batches))
        if i == len(batches):
            batches.append([])
            room.append(limit)
        batches[i] += unit
        room[i] -= units[unit]
    return batches


def stub_wheel(name: str, version: str, folder: Path) -> Path:
    """An empty wheel that satisfies ``name==version`` and needs nothing."""
    dist = name.replace("-", "_")
    info = f"{dist}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: gpu_wheels\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    path = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
    return path


def stub_version(locked: str) -> str:
    """A local version only the stub has, ordered like the locked one: ``2.13.0+cpu`` ->
    ``2.13.0+image``."""
    return f"{locked.split('+', 1)[0]}+{STUB_LABEL}"


def constraints(pins: dict[str, str], image: set[str]) -> str:
    """The lock's pins, the image's packages (and torch, triton) pinned to their stubs."""
    lines = []
    for name, version in sorted(pins.items()):
        stubbed = name in image or never_carried(name)
        lines.append(f"{name}=={stub_version(version) if stubbed else version}")
    return "\n".join(lines) + "\n"


def download(python: str, work: Path, reqs: list[str], pins: dict, image: set[str]) -> Path:
    """Resolve and download the closure into ``work/download``; stubs stand in for the image."""
    stubs, dest = work / "stubs", work / "download"
    stubs.mkdir()
    for name, version in pins.items():
        if name in image or never_carried(name):
            stub_wheel(name, stub_version(version), stubs)
    (work / "requirements.txt").write_text("\n".join(reqs) + "\n")
    (work / "constraints.txt").write_text(constraints(pins, image))
    argv = [python, "-m", "pip", "download", "--disable-pip-version-check", "--progress-bar",
            "off", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
            *(a for p in PLATFORMS for a in ("--platform", p)), "--find-links", str(stubs),
            "-r", str(work / "requirements.txt"), "-c", str(work / "constraints.txt"),
            "-d", str(dest)]  # fmt: skip
    if subprocess.run(argv, stdout=sys.stderr, check=False).returncode != 0:
        raise SystemExit("pip download failed (its output is above): see which package it names")
    pulled = [w.name for w in dest.glob("*.whl")
              if never_carried(wheel_name(w)) and f"+{STUB_LABEL}-" not in w.name]  # fmt: skip
    if pulled:
        raise SystemExit(f"pip pulled {pulled} from the index: give each a stub")
    return dest


def write(out: Path, batches: list[list[Path]], sizes: dict, report: dict) -> dict:
    """Move the batches under ``out`` (replacing earlier ones); batches.json comes last."""
    for old in [*out.glob("batch-*"), out / "batches.json"]:
        shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    rows = []
    for i, wheels in enumerate(batches, 1):
        folder = out / f"batch-{i}"
        folder.mkdir()
        for wheel in wheels:
            shutil.move(wheel, folder / wheel.name)
        size = sum(sizes[w] for w in wheels)
        rows.append({"batch": folder.name, "files": sorted(w.name for w in wheels),
                     "mib": round(size / 2**20, 1)})  # fmt: skip
    total = sum(sizes.values())
    report |= {"batches": rows, "total": {"files": len(sizes), "mib": round(total / 2**20, 1)}}
    tmp = out / ".batches.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(out / "batches.json")
    return report


def table(report: dict) -> str:
    lines = [f"{'batch':<10} {'files':>5} {'MiB':>6}"]
    for row in report["batches"]:
        lines.append(f"{row['batch']:<10} {len(row['files']):>5} {row['mib']:>6.1f}")
    total = report["total"]
    lines.append(f"{'total':<10} {total['files']:>5} {total['mib']:>6.1f}")
    return "\n".join(lines)


def check_python(python: str) -> None:
    version = subprocess.run([python, "-c", "import sys; print(*sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    if tuple(map(int, version)) != TARGET_PYTHON:
        raise SystemExit(
            f"--python {python} is Python {'.'.join(version)}: pip evaluates markers with it, "
            "so give a Python 3.12, the GPU machines' (e.g. --python python3.12)"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="gpu_wheels.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="Folder for batch-N/ and batches.json.")
    p.add_argument("--max-mib", type=float, default=56, help="Most MiB of wheels in one batch.")
    p.add_argument("--exclude", action="append", default=[], help="A package not to carry.")
    p.add_argument("--python", default=sys.executable, help="The Python 3.12 whose pip resolves.")
    args = p.parse_args(argv)
    check_python(args.python)
    image = read_names(IMAGE_LIST)
    pins = lock_pins((ROOT / "requirements.lock").read_text())
    reqs = runtime_requirements(ROOT / "pyproject.toml")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.out, prefix=".work-") as tmp:
        work = Path(tmp)
        downloaded = sorted(download(args.python, work, reqs, pins, image).glob("*.whl"))
        kept, dropped = choose(downloaded, image, {normalize(n) for n in args.exclude})
        slimmed = {}
        for i, wheel in enumerate(kept):
            if wheel_name(wheel) in SLIM:
                kept[i], left_out = slim(wheel, SLIM[wheel_name(wheel)], work / "slim")
                slimmed[wheel.name] = f"{len(left_out)} files under {SLIM[wheel_name(wheel)]}"
        sizes = {w: w.stat().st_size for w in kept}
        batches = pack(sizes, int(args.max_mib * 2**20), {w: top_levels(w) for w in kept})
        report = {"python": "cp312", "platforms": list(PLATFORMS), "max_mib": args.max_mib,
                  "downloaded": {"files": len(downloaded), "mib": round(
                      sum(w.stat().st_size for w in downloaded) / 2**20, 1)},
                  "dropped": dropped, "slimmed": slimmed}  # fmt: skip
        report = write(args.out, batches, sizes, report)
    print(table(report))


if __name__ == "__main__":
    main()
