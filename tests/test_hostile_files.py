"""Hostile file outputs and index files: nothing silent, nothing lost (issue 30).

Every jaxst file writer (``write_embeddings_npy`` / ``encode(output_path=)``, ``EmbeddingIndex.save``,
``SparseEmbeddingIndex.save``, ``AtomicFile`` under the sparse CLI output, the CLI's ``-o`` check) must
write only over a regular file or a new path (a symlink is followed and stays a symlink), refuse a
directory, FIFO, device, socket or dangling symlink with an error naming it, and leave no temp file after
SIGTERM, nor after SIGKILL once the same target is written again. Index files are read only as far as
their header calls for, with sizes checked before reading; damaged ones are a ValueError naming the file.
Non-UTF-8 input to the CLI is a one-line error. Each hostile case has a positive control beside it.
"""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest

from jaxst import cli
from jaxst.index import EmbeddingIndex, SparseEmbeddingIndex
from jaxst.io import atomic
from jaxst.io.atomic import AtomicFile, NotRegularFileError
from jaxst.io.npy import write_embeddings_npy

ROWS = np.arange(24, dtype=np.float32).reshape(6, 4) / 7


def temps(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.endswith(".tmp"))


# ------------------------------------------------------------------------------------ writers


def write_npy(path):
    write_embeddings_npy(iter([ROWS[:3], ROWS[3:]]), path, "float32", 4, 16)


def check_npy(path):
    np.testing.assert_array_equal(np.load(path), ROWS)


def write_npy_int8(path):
    write_embeddings_npy(iter([ROWS[:3], ROWS[3:]]), path, "int8", 4, 2)


def check_npy_int8(path):
    assert np.load(path).shape == (6, 4) and np.load(path).dtype == np.int8


def write_dense_index(path):
    index = EmbeddingIndex(4)
    index.add(ROWS, ids=list(range(6)), texts=[f"t{i}" for i in range(6)])
    index.save(path)


def check_dense_index(path):
    index = EmbeddingIndex.load(path)
    np.testing.assert_allclose(index.embeddings, ROWS / np.linalg.norm(ROWS, axis=1, keepdims=True), atol=1e-6)
    assert index.ids == list(range(6)) and index.texts == [f"t{i}" for i in range(6)]


def write_sparse_index(path):
    index = SparseEmbeddingIndex(4)
    index.add(ROWS, texts=[f"t{i}" for i in range(6)])
    index.save(path)


def check_sparse_index(path):
    index = SparseEmbeddingIndex.load(path)
    np.testing.assert_allclose(np.asarray(index.embeddings.todense()), ROWS)


def write_atomic(path):  # what the sparse CLI does with its .npz
    with AtomicFile(path) as out:
        np.savez(out.file, x=ROWS)
        out.commit()


def check_atomic(path):
    np.testing.assert_array_equal(np.load(path)["x"], ROWS)


WRITERS = {"npy": (write_npy, check_npy), "npy-int8": (write_npy_int8, check_npy_int8),
           "dense-index": (write_dense_index, check_dense_index),
           "sparse-index": (write_sparse_index, check_sparse_index), "atomic": (write_atomic, check_atomic)}


# ------------------------------------------------------------------------------------ targets


def make_target(tmp_path, kind: str):
    """(the path to write, a function returning a description of what is there now)."""
    path = tmp_path / "out.bin"
    real = tmp_path / "real.bin"
    if kind == "new":
        pass
    elif kind == "regular":
        path.write_bytes(b"old")
    elif kind == "symlink-to-regular":
        real.write_bytes(b"old")
        path.symlink_to(real.name)
    elif kind == "symlink-chain":
        real.write_bytes(b"old")
        (tmp_path / "mid.bin").symlink_to(real.name)
        path.symlink_to("mid.bin")
    elif kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "chardev":  # a /dev/null stand-in (major 1, minor 3) inside tmp_path; never the real one
        if os.geteuid() != 0:
            pytest.skip("creating a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    elif kind == "socket":
        os.mknod(path, stat.S_IFSOCK | 0o666)
    elif kind == "symlink-to-fifo":
        os.mkfifo(real)
        path.symlink_to(real.name)
    elif kind == "symlink-to-directory":
        real.mkdir()
        path.symlink_to(real.name)
    elif kind == "dangling-symlink":
        path.symlink_to("missing.bin")
    elif kind == "symlink-loop":
        path.symlink_to("out.bin")
    else:
        raise AssertionError(kind)

    def describe():
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return ("link", os.readlink(path))
        return (stat.S_IFMT(st.st_mode), st.st_rdev)

    return path, describe


GOOD = ["new", "regular", "symlink-to-regular", "symlink-chain"]
HOSTILE = {"directory": "a directory", "fifo": "FIFO", "chardev": "character device", "socket": "socket",
           "symlink-to-fifo": "FIFO", "symlink-to-directory": "a directory", "dangling-symlink": "dangling",
           "symlink-loop": "loop"}


@pytest.mark.parametrize("kind", GOOD)
@pytest.mark.parametrize("writer", WRITERS)
def test_writes_regular_files_new_paths_and_through_symlinks(tmp_path, writer, kind):
    write, check = WRITERS[writer]
    path, describe = make_target(tmp_path, kind)
    before = describe() if kind != "new" else None
    write(path)
    check(path)
    if kind.startswith("symlink"):
        assert describe() == before  # still the same symlink ...
        assert (tmp_path / "real.bin").is_file() and not (tmp_path / "real.bin").is_symlink()
        check(tmp_path / "real.bin")  # ... and its final target holds the new content
    else:
        assert path.is_file() and not path.is_symlink()
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's 0600
    assert temps(tmp_path) == []


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("kind", HOSTILE)
@pytest.mark.parametrize("writer", WRITERS)
def test_refuses_what_is_not_a_regular_file(tmp_path, writer, kind):
    write, _ = WRITERS[writer]
    path, describe = make_target(tmp_path, kind)
    before = describe()
    with pytest.raises(OSError) as e:
        write(path)
    assert str(path) in str(e.value) and HOSTILE[kind] in str(e.value), e.value
    if kind in ("directory", "symlink-to-directory"):
        assert isinstance(e.value, IsADirectoryError)
    else:
        assert isinstance(e.value, NotRegularFileError)
    assert describe() == before  # the FIFO, device node, socket or link is still what it was
    assert temps(tmp_path) == []
    if kind == "chardev":
        assert stat.S_ISCHR(os.lstat(path).st_mode) and os.lstat(path).st_rdev == os.makedev(1, 3)


@pytest.mark.parametrize("kind", ["fifo", "chardev", "socket", "symlink-to-fifo", "dangling-symlink", "directory"])
@pytest.mark.parametrize("sparse", [False, True])
def test_cli_refuses_the_output_before_loading_a_model(tmp_path, capsys, monkeypatch, kind, sparse):
    def no_model(name):
        raise AssertionError("the output must be refused before a model loads")

    monkeypatch.setattr(cli, "load_model", no_model)
    monkeypatch.setattr(cli, "load_sparse_model", no_model)
    src = tmp_path / "texts.txt"
    src.write_text("one\ntwo\n", encoding="utf-8")
    path, describe = make_target(tmp_path, kind)
    before = describe()
    assert cli.main(["encode", str(src), "-o", str(path), *(["--sparse"] if sparse else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxst: error: ") and err.count("\n") == 1 and str(path) in err, err
    assert describe() == before
    assert temps(tmp_path) == []


def test_encode_output_path_refuses_a_fifo_before_encoding(make_tiny_st, tmp_path):
    from jaxst import SentenceTransformer

    model = SentenceTransformer(str(make_tiny_st()))
    fifo = tmp_path / "emb.npy"
    os.mkfifo(fifo)
    seen = []

    def texts():
        for t in ["a", "b"]:
            seen.append(t)
            yield t

    with pytest.raises(NotRegularFileError, match="FIFO"):
        model.encode(texts(), output_path=fifo)
    assert seen == [] and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert temps(tmp_path) == []  # the positive controls: test_streaming.py and the "npy" writer above


# ------------------------------------------------------------------------------------ litter


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("writer", WRITERS)
def test_next_write_removes_temps_of_dead_writers_only(tmp_path, writer):
    write, check = WRITERS[writer]
    path = tmp_path / "out.bin"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = tmp_path / f".out.bin.{dead_pid()}.abcd1234{atomic.SUFFIX}"
        live = tmp_path / f".out.bin.{sleeper.pid}.efgh5678{atomic.SUFFIX}"
        init = tmp_path / f".out.bin.1.ijkl9012{atomic.SUFFIX}"  # pid 1 is alive (maybe not ours to signal)
        other = tmp_path / f".out.bin.x.{dead_pid()}.mnop3456{atomic.SUFFIX}"  # target "out.bin.x"'s temp
        foreign = tmp_path / ".out.bin.12345678.tmp"  # not jaxst's naming: never touched
        for p in (dead, live, init, other, foreign):
            p.write_bytes(b"\0" * 100)
        write(path)
        check(path)
        assert not dead.exists()
        assert live.exists() and init.exists() and other.exists() and foreign.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# A child process writes the target slowly through AtomicFile (or NpyStreamWriter), says "ready" once its
# temp file exists, and is killed after a varying delay.
CHILD = """
import signal, sys, time
sys.path.insert(0, {root!r})
if {handler!r} == "raise":
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(3))
if {writer!r} == "npy":
    import numpy as np
    from jaxst.io.npy import NpyStreamWriter
    with NpyStreamWriter({path!r}, np.float32, (4,)) as w:
        w.append(np.zeros((1, 4), np.float32))
        print("ready", flush=True)
        for _ in range(3000):
            w.append(np.ones((64, 4), np.float32))
            time.sleep(0.002)
        w.commit()
else:
    from jaxst.io.atomic import AtomicFile
    with AtomicFile({path!r}) as f:
        f.file.write(b"x")
        print("ready", flush=True)
        for _ in range(3000):
            f.file.write(b"y" * 4096)
            f.file.flush()
            time.sleep(0.002)
        f.commit()
"""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_and_kill(path, sig, delay: float, writer: str = "atomic", handler: str = "default") -> int:
    code = CHILD.format(root=ROOT, path=str(path), writer=writer, handler=handler)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        time.sleep(delay)
        child.send_signal(sig)
        return child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


@pytest.mark.parametrize("writer", ["atomic", "npy"])
def test_sigterm_leaves_no_temp_file(tmp_path, writer):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    delays = [0, 0.01, 0.05, 0.2] if writer == "atomic" else [0.05]
    for delay in delays:
        assert run_and_kill(path, signal.SIGTERM, delay, writer) == -signal.SIGTERM  # still "killed by SIGTERM"
        assert temps(tmp_path) == [], delay
        assert path.read_bytes() == b"old"


def test_sigterm_with_a_raising_handler_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out.bin"
    for delay in (0, 0.05):
        assert run_and_kill(path, signal.SIGTERM, delay, handler="raise") == 3  # the program's own handler ran
        assert temps(tmp_path) == [] and not path.exists()


@pytest.mark.parametrize("writer", ["atomic", "npy"])
def test_after_sigkill_the_next_write_leaves_no_temp_file(tmp_path, writer):
    path = tmp_path / "out.bin"
    delays = [0, 0.01, 0.05, 0.1] if writer == "atomic" else [0.05]
    for delay in delays:
        assert run_and_kill(path, signal.SIGKILL, delay, writer) == -signal.SIGKILL
        assert len(temps(tmp_path)) == 1  # SIGKILL cannot be caught ...
    (write_npy if writer == "npy" else write_atomic)(path)  # ... the next write of the same target cleans up
    assert temps(tmp_path) == []
    (check_npy if writer == "npy" else check_atomic)(path)


def test_sigterm_handler_is_restored_after_writing(tmp_path):
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with AtomicFile(tmp_path / "a.bin") as f:
        assert signal.getsignal(signal.SIGTERM) is atomic._on_sigterm
        f.commit()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    with pytest.raises(RuntimeError), AtomicFile(tmp_path / "b.bin"):
        raise RuntimeError
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert temps(tmp_path) == [] and os.listdir(tmp_path) == ["a.bin"]


# ------------------------------------------------------------------------------------ index files


def rezip(src, dst, replace=None, compression=None, extra=()):
    """Copy the zip ``src`` to ``dst``: members replaced by ``replace`` (name -> bytes), some compressed."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = replace.get(name, zin.read(name))
            zout.writestr(name, data, compress_type=(compression or {}).get(name, zipfile.ZIP_STORED))
        for name, data, kind in extra:
            zout.writestr(name, data, compress_type=kind)
    return dst


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "index.jxi"
    write_dense_index(path)
    return path


@pytest.fixture
def opened(monkeypatch):
    """The names of the zip members opened for reading during the test."""
    names = []
    original = zipfile.ZipFile.open

    def spy(self, name, mode="r", *args, **kwargs):
        names.append(name.filename if isinstance(name, zipfile.ZipInfo) else name)
        return original(self, name, mode, *args, **kwargs)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    return names


def test_unused_huge_deflated_member_is_never_read(saved, tmp_path, opened):
    bomb = tmp_path / "bomb.jxi"
    rezip(saved, bomb)
    info = zipfile.ZipInfo("junk.npy")
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(bomb, "a") as z, z.open(info, "w", force_zip64=True) as f:
        f.write(_npy(np.zeros((0, 4), np.float32))[:128])
        block = b"\0" * (1 << 20)
        for _ in range(200):  # 200 MB of zeros: about 200 KB deflated
            f.write(block)
    assert bomb.stat().st_size < 2_000_000
    opened.clear()
    start = time.perf_counter()
    check_dense_index(bomb)
    assert time.perf_counter() - start < 5
    assert "junk.npy" not in opened and "junk.npy" in zipfile.ZipFile(bomb).namelist()
    check_dense_index(saved)  # control


def test_deflated_used_member_is_refused_before_inflating(saved, tmp_path, opened):
    deflated = rezip(saved, tmp_path / "deflated.jxi", compression={"embeddings.npy": zipfile.ZIP_DEFLATED})
    opened.clear()
    with pytest.raises(ValueError, match="embeddings.npy is compressed") as e:
        EmbeddingIndex.load(deflated)
    assert str(deflated) in str(e.value) and "embeddings.npy" not in opened


def test_corrupted_deflate_member_is_a_clear_error(saved, tmp_path):
    # a deflated member whose compressed bytes are garbage: refused as compressed, never a zlib.error
    path = rezip(saved, tmp_path / "corrupt.jxi", compression={"ids.json": zipfile.ZIP_DEFLATED})
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("ids.json")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start : start + info.compress_size] = b"\xff" * info.compress_size
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="compressed") as e:
        EmbeddingIndex.load(path)
    assert str(path) in str(e.value)


def test_stored_member_with_a_bad_crc_is_a_clear_error(saved, tmp_path):
    path = tmp_path / "crc.jxi"
    data = bytearray(saved.read_bytes())
    with zipfile.ZipFile(saved) as z:
        info = z.getinfo("embeddings.npy")
    data[info.header_offset + 30 + len(info.filename) + len(info.extra) + 200] ^= 0xFF  # a row byte
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged") as e:
        EmbeddingIndex.load(path)
    assert str(path) in str(e.value)


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _header(saved) -> dict:
    with zipfile.ZipFile(saved) as z:
        return json.loads(z.read("header.json"))


def test_member_larger_than_the_header_allows_is_refused_unread(saved, tmp_path, opened):
    big = rezip(saved, tmp_path / "big.jxi", replace={"embeddings.npy": _npy(np.zeros((5000, 4), np.float32))})
    opened.clear()
    with pytest.raises(ValueError, match="declares") as e:
        EmbeddingIndex.load(big)
    assert str(big) in str(e.value) and "embeddings.npy" not in opened
    header = {**_header(saved), "count": 5000, "has_ids": False, "has_texts": False}  # control: header agrees
    ok = rezip(saved, tmp_path / "ok.jxi", replace={"embeddings.npy": _npy(np.zeros((5000, 4), np.float32)),
                                                     "header.json": json.dumps(header).encode()})
    assert len(EmbeddingIndex.load(ok)) == 5000


def test_sparse_member_larger_than_the_header_allows_is_refused(tmp_path, opened):
    path = tmp_path / "sparse.jxi"
    write_sparse_index(path)
    big = rezip(path, tmp_path / "big.jxi", replace={"values.npy": _npy(np.zeros((6, 4096), np.float32))})
    opened.clear()
    with pytest.raises(ValueError, match="declares"):
        SparseEmbeddingIndex.load(big)
    assert "values.npy" not in opened
    check_sparse_index(path)


BAD_HEADERS = {
    "list": b"[1, 2, 3]",
    "string": b'"jaxst-embedding-index"',
    "number": b"7",
    "not json": b"{not json",
    "not utf-8": b'{"format": "\xff\xfe"}',
    "count is a string": None,
    "count is negative": None,
    "dim is a bool": None,
    "precision unknown": None,
    "similarity unknown": None,
}


@pytest.mark.parametrize("case", BAD_HEADERS)
def test_bad_headers_are_a_value_error_naming_the_file(saved, tmp_path, case):
    data = BAD_HEADERS[case]
    if data is None:
        key, value = {"count is a string": ("count", "6"), "count is negative": ("count", -1),
                      "dim is a bool": ("dim", True), "precision unknown": ("precision", "float64"),
                      "similarity unknown": ("similarity", "l2")}[case]
        data = json.dumps({**_header(saved), key: value}).encode()
    path = rezip(saved, tmp_path / "bad.jxi", replace={"header.json": data})
    with pytest.raises(ValueError) as e:
        EmbeddingIndex.load(path)
    assert str(path) in str(e.value), e.value


BAD_LABELS = {
    "ids not json": ("ids.json", b"[1, 2,"),
    "ids a dict": ("ids.json", b'{"a": 1}'),
    "ids of bools": ("ids.json", b"[true, false, true, true, true, true]"),
    "ids of lists": ("ids.json", b"[[1], 2, 3, 4, 5, 6]"),
    "ids too few": ("ids.json", b"[1, 2]"),
    "texts not utf-8": ("texts.json", b'["\xff", "a", "b", "c", "d", "e"]'),
    "texts of numbers": ("texts.json", b"[1, 2, 3, 4, 5, 6]"),
    "texts a string": ("texts.json", b'"abcdef"'),
    "texts null": ("texts.json", b"null"),
}


@pytest.mark.parametrize("case", BAD_LABELS)
@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_bad_ids_or_texts_are_a_value_error_naming_the_file(tmp_path, case, kind):
    path = tmp_path / "index.jxi"
    if kind == "dense":
        write_dense_index(path)
    else:
        index = SparseEmbeddingIndex(4)
        index.add(ROWS, ids=list(range(6)), texts=[f"t{i}" for i in range(6)])
        index.save(path)
    cls = EmbeddingIndex if kind == "dense" else SparseEmbeddingIndex
    assert len(cls.load(path)) == 6  # control
    name, data = BAD_LABELS[case]
    bad = rezip(path, tmp_path / "bad.jxi", replace={name: data})
    with pytest.raises(ValueError) as e:
        cls.load(bad)
    assert str(bad) in str(e.value), e.value


def test_missing_or_invalid_npy_member_is_a_value_error(saved, tmp_path):
    with zipfile.ZipFile(saved) as zin, zipfile.ZipFile(tmp_path / "missing.jxi", "w") as zout:
        for name in zin.namelist():
            if name != "embeddings.npy":
                zout.writestr(name, zin.read(name))
    with pytest.raises(ValueError, match="embeddings.npy") as e:
        EmbeddingIndex.load(tmp_path / "missing.jxi")
    assert "missing.jxi" in str(e.value)
    garbage = rezip(saved, tmp_path / "garbage.jxi", replace={"embeddings.npy": b"\x93NUMPY garbage"})
    with pytest.raises(ValueError, match="embeddings.npy"):
        EmbeddingIndex.load(garbage)
    pickled = rezip(saved, tmp_path / "pickled.jxi", replace={"embeddings.npy": _npy(np.array([object()]))})
    with pytest.raises(ValueError, match="embeddings.npy"):
        EmbeddingIndex.load(pickled)


# ------------------------------------------------------------------------------------ CLI input


NOT_UTF8 = b"first line\nsecond \xff\xfe line\n"
NOT_UTF8_FIRST = b"\xff\xfe first line\nsecond line\n"  # refused before a model loads: a fast subprocess


def run_cli(*args, stdin: bytes, env=None) -> subprocess.CompletedProcess:
    environ = {**os.environ, "HF_HUB_OFFLINE": "1", "JAXST_COMPILATION_CACHE": "0", **(env or {})}
    return subprocess.run([sys.executable, "-m", "jaxst.cli", *args], input=stdin, capture_output=True,
                          timeout=120, env=environ, cwd=ROOT)


@pytest.mark.parametrize("locale", ["C", "C.UTF-8"])
def test_non_utf8_stdin_is_a_one_line_error(tmp_path, locale):
    env = {"LC_ALL": locale, "LANG": locale, "PYTHONUTF8": "0"}
    out = tmp_path / "out.npy"
    for args, stdin in ((["encode", "-o", str(out)], NOT_UTF8_FIRST), (["search", "query", "--corpus", "-"], NOT_UTF8)):
        result = run_cli(*args, stdin=stdin, env=env)
        err = result.stderr.decode()
        assert result.returncode == 2, err
        assert err.startswith("jaxst: error: ") and err.count("\n") == 1 and "UTF-8" in err and "stdin" in err, err
    assert not out.exists() and temps(tmp_path) == []


class FakeModel:
    """Consumes the texts as ``encode`` does, chunk by chunk, writing through ``output_path``."""

    def encode(self, texts, output_path=None, **kwargs):
        chunks = ([np.full((1, 4), len(t), np.float32)] for t in texts)
        write_embeddings_npy((c[0] for c in chunks), output_path, "float32", 4, 16)
        return np.load(output_path, mmap_mode="r")


@pytest.mark.parametrize("source", ["stdin", "file"])
def test_non_utf8_line_midway_through_encode_is_a_one_line_error(tmp_path, capsys, monkeypatch, source):
    monkeypatch.setattr(cli, "load_model", lambda name: FakeModel())
    src = tmp_path / "texts.txt"
    out = tmp_path / "out.npy"
    args = ["encode", "-o", str(out)]
    if source == "stdin":  # what a C/POSIX locale's stdin gives for the bytes \xff\xfe
        monkeypatch.setattr(sys, "stdin", io.StringIO(NOT_UTF8.decode("utf-8", "surrogateescape")))
    else:
        src.write_bytes(NOT_UTF8)
        args.insert(1, str(src))
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxst: error: ") and err.count("\n") == 1 and "UTF-8" in err, err
    assert ("stdin" if source == "stdin" else str(src)) in err
    assert not out.exists() and temps(tmp_path) == []
    monkeypatch.setattr(sys, "stdin", io.StringIO("first line\nsecond line\n"))  # control
    assert cli.main(["encode", "-o", str(out)]) == 0
    np.testing.assert_array_equal(np.load(out), [[10] * 4, [11] * 4])


def test_non_utf8_input_files_and_queries_are_one_line_errors(tmp_path, capsys, monkeypatch):
    def no_model(name):
        raise AssertionError("bad input must be refused before a model loads")

    monkeypatch.setattr(cli, "load_model", no_model)
    src = tmp_path / "texts.txt"
    src.write_bytes(NOT_UTF8)
    assert cli.main(["search", "query", "--corpus", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxst: error: ") and err.count("\n") == 1 and "UTF-8" in err and str(src) in err, err
    assert cli.main(["search", "bad \udcff query", "--corpus", str(tmp_path / "texts.txt")]) == 2  # argv bytes
    err = capsys.readouterr().err
    assert err.startswith("jaxst: error: ") and err.count("\n") == 1 and "query 1" in err, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("ok\nsurrogate \udcff\n"))  # stdin under a C locale
    assert cli.main(["search", "query", "--corpus", "-"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxst: error: ") and "stdin" in err and "UTF-8" in err, err


# ------------------------------------------------------------------------------------ model folders


def test_model_folder_save_sweeps_dead_temp_folders_only(tmp_path):
    from jaxst.io.export import atomic_folder

    target = tmp_path / "model"
    dead = tmp_path / f".model.{dead_pid()}.abcd1234{atomic.SUFFIX}"
    live = tmp_path / f".model.1.efgh5678{atomic.SUFFIX}"
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 100)
    with atomic_folder(target) as tmp:
        assert tmp.name.startswith(f".model.{os.getpid()}.") and tmp.name.endswith(atomic.SUFFIX)
        (tmp / "config.json").write_text("{}")
    assert not dead.exists() and live.exists()
    assert sorted(os.listdir(target)) == ["config.json"]
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_sigterm_during_a_model_folder_save_leaves_no_temp_folder(tmp_path):
    code = f"""
        import sys, time
        from jaxst.io.export import atomic_folder
        with atomic_folder({str(tmp_path / "model")!r}) as tmp:
            (tmp / "config.json").write_text("{{}}")
            print("ready", flush=True)
            time.sleep(30)
    """
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        assert len(os.listdir(tmp_path)) == 1
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=30) == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    assert os.listdir(tmp_path) == []
