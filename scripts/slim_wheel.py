"""``python scripts/slim_wheel.py WHEEL --drop PREFIX [--drop PREFIX ...] --out DIR``: the
wheel again without the files under PREFIX, its RECORD to match.

The GPU machines take 64 MiB of files a call, and Ray's wheel is 76 MiB, 31 of them
``ray/jars/`` (the Java workers' jar, which a Python-only Ray never loads):
``--drop ray/jars/`` makes it 45 MiB, small enough to travel with
``scripts/gpu_sweep.sh --wheels``. The slimmed wheel keeps its file name, so pip sees the
same package and version; what was left out is listed on stderr.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path


def slim(wheel: Path, drop: list[str], out_dir: Path) -> tuple[Path, list[str]]:
    """(the slimmed wheel, the names left out); every PREFIX must match some file."""
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / wheel.name
    if out.resolve() == wheel.resolve():
        raise SystemExit(f"--out {out_dir} holds {wheel.name} itself: name another folder")
    with zipfile.ZipFile(wheel) as src:
        names = src.namelist()
        record = next((n for n in names if n.endswith(".dist-info/RECORD")), None)
        if record is None:
            raise SystemExit(f"{wheel}: no .dist-info/RECORD, not a wheel")
        unmatched = [p for p in drop if not any(n.startswith(p) for n in names)]
        if unmatched:
            raise SystemExit(f"{wheel}: no file under {unmatched}")
        left_out = [n for n in names if n.startswith(tuple(drop))]
        tmp = out.with_name(f".{out.name}.tmp")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                if info.filename in left_out or info.filename == record:
                    continue
                dst.writestr(info, src.read(info.filename), compress_type=info.compress_type)
            kept = [
                line
                for line in src.read(record).decode().splitlines()
                if line and line.split(",", 1)[0] not in left_out
            ]
            dst.writestr(record, "\n".join(kept) + "\n")
    tmp.replace(out)  # never a half-written wheel under the real name
    return out, left_out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="slim_wheel.py", description=__doc__.split("\n\n")[0])
    p.add_argument("wheel", type=Path)
    p.add_argument("--drop", action="append", required=True, help="A path prefix to leave out.")
    p.add_argument("--out", type=Path, required=True, help="Folder for the slimmed wheel.")
    args = p.parse_args(argv)
    out, left_out = slim(args.wheel, args.drop, args.out)
    before, after = args.wheel.stat().st_size / 2**20, out.stat().st_size / 2**20
    print(f"{out}: {after:.1f} MiB (was {before:.1f}); left out {len(left_out)} files",
          file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
