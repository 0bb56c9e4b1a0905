"""Write a loaded model back out: a sentence-transformers folder that PyTorch users load unchanged, or an
orbax params checkpoint beside the folder's config files, and that checkpoint back to a folder.

    model.folder_plan() (plain data: what the model remembered at load time)──▶ FolderPlan
          ──the CURRENT model.params, renamed and transposed (jaxst.io.weights)──▶ safetensors tensors
          ──every file into a temp folder beside the target──▶ renamed into place

A ``FolderPlan`` is plain data: the JSON files to write, the files to copy (tokenizer files from the
folder the model was loaded from), and which subtree of ``params`` goes into which safetensors file under
which name prefix. Each model family builds its plan with ``sentence_transformer_plan`` /
``cross_encoder_plan`` / ``sparse_encoder_plan`` (this module knows the folder's layout, not the model
classes; what each module writes is its kind file's, ``jaxst.modules``); ``save`` (in ``jaxst.base``) and the
orbax conversion all go through the one writer, ``write_model_folder``.

Saving is atomic at the folder level: nothing is written into ``path`` itself. Files go into a temp folder
next to it, which replaces ``path`` by rename once complete; an exception (or a crash) midway leaves
``path`` as it was and at most a hidden ``.<name>.tmp-*`` folder beside it. Like sentence-transformers,
saving into an existing folder keeps the files there that the save does not write (a README, notes),
except older weights (``*.safetensors``, ``*.bin``, ``onnx/`` ...) that would no longer match. A
non-empty folder that holds no model is refused unless ``overwrite=True``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from jaxst import modules
from jaxst.io.atomic import release, temp_folder, umask
from jaxst.io.folder import ModuleSpec
from jaxst.io.fsync import fsync_path
from jaxst.io.weights import state_dict_from_params
from jaxst.modules import ModuleFiles, SaveContext

# Files a tokenizer may consist of; those present in the source folder are copied.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
    "spiece.model",
    "tokenizer.model",
    "chat_template.jinja",
)

# modules.json "type" per module kind: the long-standing names every sentence-transformers version since
# 2.x resolves (6.x maps them to its new module paths), with the folder name it saves each module under.
# Both come from the kind's file in jaxst.modules.
MODULE_TYPES = {k.kind: k.type_path for k in modules.KINDS.values() if k.type_path is not None}
MODULE_CLASS_NAMES = {k.kind: k.folder_name for k in modules.KINDS.values() if k.folder_name is not None}

# Weights left over in a folder that is saved into: they would no longer match the new model.
STALE_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".onnx", ".pt", ".pth", ".ckpt", ".index.json")
STALE_WEIGHT_FOLDERS = ("onnx", "openvino")

ORBAX_MANIFEST = "jaxst_orbax.json"
ORBAX_FORMAT = "jaxst-orbax-params"
ORBAX_PARAMS = "params"
ORBAX_UNMAPPED = "unmapped"


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    """One params subtree written to a safetensors file: ``params[path...]`` -> ``prefix + torch name``."""

    file: str
    params: tuple[str | int, ...]
    prefix: str = ""

    def to_json(self) -> dict:
        return {"file": self.file, "params": [str(p) for p in self.params], "prefix": self.prefix}

    @classmethod
    def from_json(cls, entry: dict) -> WeightsEntry:
        return cls(str(entry["file"]), tuple(entry["params"]), str(entry.get("prefix", "")))


@dataclasses.dataclass
class FolderPlan:
    """Everything a model folder holds, as data: JSON files, files to copy, and where params go."""

    model_class: str  # "SentenceTransformer" or "CrossEncoder"
    json_files: dict[str, object]
    copies: dict[str, Path]
    weights: list[WeightsEntry]
    unmapped: dict[str, dict[str, np.ndarray]]  # file -> tensors jaxst does not model (BERT's pooler), PyTorch form


# ---------------------------------------------------------------------------------------- plans


def _jaxst_version() -> str:
    from jaxst import __version__

    return __version__


def _tokenizer_copies(folder: Path) -> dict[str, Path]:
    folder = Path(folder)
    copies = {name: folder / name for name in TOKENIZER_FILES if (folder / name).is_file()}
    if "tokenizer.json" not in copies and "vocab.txt" not in copies:
        raise OSError(
            f"cannot save: the tokenizer files of this model are gone from {folder} (it was loaded from there; "
            "jaxst copies tokenizer.json / vocab.txt from that folder)"
        )
    return copies


def _model_config(model_type: str, prompts: dict, default_prompt_name: str | None, similarity_fn_name: str,
                  **optional) -> dict:
    """config_sentence_transformers.json; ``optional`` entries (truncate_dim, max_active_dims) only when set."""
    config = {
        "__version__": {"jaxst": _jaxst_version()},
        "model_type": model_type,
        "prompts": dict(prompts),
        "default_prompt_name": default_prompt_name,
        "similarity_fn_name": similarity_fn_name,
    }
    config.update({key: int(value) for key, value in optional.items() if value is not None})
    return config


def _type_path(kind: str, v6: bool = False) -> str:
    """The modules.json type a module of ``kind`` is written under (sentence-transformers 6's own class path
    with ``v6``, as its SparseEncoder writes them)."""
    k = modules.by_kind(kind)
    path = k.v6_type_path if v6 else k.type_path
    if path is None:
        raise ValueError(f"cannot save a {kind} module: it has no sentence-transformers type")
    return path


def _module_folder(idx: int, kind: str) -> str:
    """``{idx}_{Name}``: the folder a module is saved in (its kind file's ``folder_name``)."""
    name = modules.by_kind(kind).folder_name
    if name is None:
        raise ValueError(f"cannot save a {kind} module in a folder of its own")
    return f"{idx}_{name}"


def _module_files(spec, head: int | None = None, *, hf_config: dict | None = None, max_seq_length: int | None = None,
                  params=None, settings: dict | None = None, weights: dict | None = None,
                  buffers: dict | None = None) -> ModuleFiles:
    """What ``spec``'s kind file says the module writes (``ModuleKind.files``), given the model as it is now:
    ``settings`` / ``weights`` / ``buffers`` are the family's, keyed by module kind; ``params`` its params
    (a head's subtree is handed to the kind)."""
    kind = modules.by_kind(spec.kind)
    head_params = params["heads"][head] if kind.head_params and params is not None else None
    context = SaveContext(hf_config=hf_config, max_seq_length=max_seq_length,
                          settings=(settings or {}).get(spec.kind, {}), head=head, head_params=head_params,
                          weights=(weights or {}).get(spec.kind, ()), buffers=(buffers or {}).get(spec.kind, {}))
    return kind.files(spec, context)


def _place(plan: FolderPlan, files: ModuleFiles, folder: str, source: Path) -> None:
    """Put one module's files into ``plan`` under ``folder`` ("" for the root); tokenizer files come from
    ``source``, the folder the module was loaded from."""
    sub = f"{folder}/" if folder else ""
    for name, data in files.json_files.items():
        plan.json_files[f"{sub}{name}"] = data
    if files.tokenizer:
        plan.copies.update({f"{sub}{name}": src for name, src in _tokenizer_copies(source).items()})
    for path, prefix in files.weights:
        plan.weights.append(WeightsEntry(f"{sub}model.safetensors", tuple(path), prefix))
    if files.unmapped:
        plan.unmapped.setdefault(f"{sub}model.safetensors", {}).update(files.unmapped)


def sentence_transformer_plan(*, hf_config: dict, module_specs: list, max_seq_length: int, prompts: dict,
                              default_prompt_name: str | None, similarity_fn_name: str, truncate_dim: int | None,
                              unmapped: dict[str, np.ndarray], params=None, settings: dict | None = None,
                              buffers: dict | None = None, model_class: str = "SentenceTransformer",
                              max_active_dims: int | None = None) -> FolderPlan:
    """The folder ``SentenceTransformer.save`` writes: sentence-transformers' layout, module by module, each
    module's files as its kind file says (``jaxst.modules``). Also a MultiVectorEncoder's and a CSR
    SparseEncoder's folder (``model_class``), which are laid out the same way.

    ``module_specs`` are the ``jaxst.io.folder.ModuleSpec`` the model was loaded from (Transformer first, at
    the folder's root; the others in ``{idx}_{Name}``); ``settings`` / ``buffers`` the family's current
    settings and buffers by module kind; ``params`` the model's params, whose heads are numbered by
    ``jaxst.modules.head_indices``."""
    plan = FolderPlan(model_class, {}, {}, [], {"model.safetensors": dict(unmapped)} if unmapped else {})
    entries = []
    for idx, (spec, head) in enumerate(zip(module_specs, modules.head_indices(module_specs))):
        files = _module_files(spec, head, hf_config=hf_config, max_seq_length=max_seq_length, params=params,
                              settings=settings, buffers=buffers)
        kind = files.kind or spec.kind
        folder = "" if idx == 0 else _module_folder(idx, kind)
        entries.append({"idx": idx, "name": str(idx), "path": folder, "type": _type_path(kind)})
        _place(plan, files, folder, spec.path)
    plan.json_files["modules.json"] = entries
    plan.json_files["config_sentence_transformers.json"] = _model_config(
        model_class, prompts, default_prompt_name, similarity_fn_name, truncate_dim=truncate_dim,
        max_active_dims=max_active_dims)
    return plan


def cross_encoder_plan(*, hf_config: dict, transformer_path: Path, transformer_config: dict, max_seq_length: int,
                       activation_fn: str, prompts: dict, default_prompt_name: str | None, base_model_prefix: str,
                       has_pooler: bool = False, logit_score: dict | None = None, lm_head: bool = False) -> FolderPlan:
    """The folder ``CrossEncoder.save`` writes, as sentence-transformers 6 saves a CrossEncoder: one
    sequence-classification Transformer module, the activation (a torch class path) in
    config_sentence_transformers.json. Params: ``encoder``, ``pooler`` (BERT) and ``classifier``.

    With ``logit_score`` (a ``LogitScore`` module config): a causal-LM reranker, a text-generation Transformer
    followed by ``1_LogitScore``. Params: ``encoder`` (the decoder, under ``base_model_prefix``) and, when
    the LM head is not tied to the embeddings (``lm_head``), ``lm_head``."""
    hf_config = dict(hf_config)
    if isinstance(hf_config.get("sentence_transformers"), dict):  # the pre-v4 place: keep it consistent
        hf_config["sentence_transformers"] = {**hf_config["sentence_transformers"], "activation_fn": activation_fn}
    task = "sequence-classification" if logit_score is None else "text-generation"
    weights = [(("encoder",), f"{base_model_prefix}.")]
    if logit_score is not None:
        weights += [(("lm_head",), "lm_head.")] if lm_head else []
    else:
        weights += [(("pooler",), f"{base_model_prefix}.pooler.")] if has_pooler else []
        weights += [(("classifier",), "classifier.")]
    specs = [ModuleSpec("transformer", Path(transformer_path), {"transformer_task": task, **transformer_config})]
    if logit_score is not None:
        specs.append(ModuleSpec("logit_score", Path(transformer_path), dict(logit_score)))
    plan = FolderPlan("CrossEncoder", {}, {}, [], {})
    entries = []
    for idx, spec in enumerate(specs):
        files = _module_files(spec, hf_config=hf_config, max_seq_length=max_seq_length,
                              weights={"transformer": tuple(weights)})
        folder = "" if idx == 0 else _module_folder(idx, spec.kind)
        entries.append({"idx": idx, "name": str(idx), "path": folder, "type": _type_path(spec.kind)})
        _place(plan, files, folder, spec.path)
    plan.json_files["modules.json"] = entries
    plan.json_files["config_sentence_transformers.json"] = {
        "__version__": {"jaxst": _jaxst_version()},
        "model_type": "CrossEncoder",
        "activation_fn": activation_fn,
        "prompts": dict(prompts),
        "default_prompt_name": default_prompt_name,
    }
    return plan


# sentence-transformers 6's class paths, as its SparseEncoder saves them (from each kind's file in jaxst.modules)
SPARSE_MODULE_TYPES = {k.kind: k.v6_type_path for k in modules.KINDS.values() if k.v6_type_path is not None}


def sparse_encoder_plan(*, routes: dict, router: dict | None, hf_config: dict | None, max_seq_length: int | None,
                        settings: dict, weights: dict, prompts: dict, default_prompt_name: str | None,
                        similarity_fn_name: str, max_active_dims: int | None) -> FolderPlan:
    """The folder ``SparseEncoder.save`` writes, as sentence-transformers 6 saves one: a fill-mask Transformer
    at the root and ``1_SpladePooling``; or a ``Router`` (router_config.json) with one sub-folder per module,
    named as loaded. Each module's files are its kind file's (``jaxst.modules``): for SPLADE the family says
    where the encoder and the masked-LM head are (``weights["transformer"]``), a SparseStaticEmbedding writes
    ``params["static"]``."""
    plan = FolderPlan("SparseEncoder", {}, {}, [], {})

    def add(spec, folder: str) -> str:
        files = _module_files(spec, hf_config=hf_config, max_seq_length=max_seq_length, settings=settings,
                              weights=weights)
        _place(plan, files, folder, spec.path)
        return _type_path(files.kind or spec.kind, v6=True)

    if router is None:
        entries = []
        for idx, spec in enumerate(routes[None]):
            folder = "" if idx == 0 else _module_folder(idx, spec.kind)  # Transformer at the root, as saved by ST
            entries.append({"idx": idx, "name": str(idx), "path": folder, "type": add(spec, folder)})
    else:
        entries = [{"idx": 0, "name": "0", "path": "", "type": _type_path("router", v6=True)}]
        types, structure = {}, {}
        for name, specs in routes.items():
            structure[name] = [spec.path.name for spec in specs]
            for spec in specs:
                types[spec.path.name] = add(spec, spec.path.name)
        layout = {"router": {"types": types, "structure": structure, "parameters": dict(router)}}
        _place(plan, _module_files(ModuleSpec("router", Path("."), {}), settings=layout), "", Path("."))
    plan.json_files["modules.json"] = entries
    plan.json_files["config_sentence_transformers.json"] = _model_config(
        "SparseEncoder", prompts, default_prompt_name, similarity_fn_name, max_active_dims=max_active_dims)
    return plan


def unmapped_tensors(state_dict: dict, prefixes: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Tensors of an encoder checkpoint that jaxst does not model but ``AutoModel`` has: BERT's pooler
    (``pooler.dense.*``). Kept at load time so that a saved folder loads in transformers with none missing."""
    out = {}
    for key, value in state_dict.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key.startswith("pooler."):
            out[key] = np.asarray(value, dtype=np.float32)
    return out


def plan_for(model) -> FolderPlan:
    """``model.folder_plan()``: every jaxst model (``jaxst.base.BaseModel``) describes the folder it saves as."""
    plan = getattr(model, "folder_plan", None)
    if plan is None:
        raise TypeError(f"can only save a jaxst model (SentenceTransformer, CrossEncoder, ...), "
                        f"got {type(model).__name__}")
    return plan()


# ---------------------------------------------------------------------------------------- tensors


def _subtree(params, path: tuple) -> dict:
    node = params
    for key in path:
        if not isinstance(node, dict):
            raise ValueError(f"params has no subtree {'/'.join(map(str, path))}")
        for candidate in (key, str(key), int(key) if str(key).isdigit() else None):
            if candidate is not None and candidate in node:
                node = node[candidate]
                break
        else:
            raise ValueError(f"params has no subtree {'/'.join(map(str, path))} (keys there: {sorted(map(str, node))})")
    return node


def plan_tensors(plan: FolderPlan, params) -> dict[str, dict[str, np.ndarray]]:
    """file -> {PyTorch name: array}: the params in PyTorch names and layouts, plus the unmapped tensors."""
    files: dict[str, dict[str, np.ndarray]] = {}
    for entry in plan.weights:
        tensors = files.setdefault(entry.file, {})
        for name, array in state_dict_from_params(_subtree(params, entry.params), entry.prefix).items():
            if name in tensors:
                raise ValueError(f"two params map to {name!r} in {entry.file}")
            tensors[name] = array
    for file, extra in plan.unmapped.items():
        tensors = files.setdefault(file, {})
        for name, array in extra.items():
            tensors.setdefault(name, np.ascontiguousarray(array, dtype=np.float32))
    return files


# ---------------------------------------------------------------------------------------- the writer


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})  # "pt": transformers' loader expects it
    fsync_path(path)


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # follows symlinks (Hugging Face cache snapshots link into blobs/)
    fsync_path(dst)


def is_model_folder(folder: Path) -> bool:
    folder = Path(folder)
    return any((folder / name).is_file() for name in ("modules.json", "config.json", ORBAX_MANIFEST))


def _carry_over(old: Path, new: Path) -> None:
    """Bring the files of ``old`` that ``new`` does not have into ``new`` (hard links where possible).

    Older weights are not carried over: they would no longer match the model just written. In an old
    orbax folder that includes its params checkpoint and manifest."""
    stale_folders = set(STALE_WEIGHT_FOLDERS)
    if (old / ORBAX_MANIFEST).is_file():
        stale_folders |= {ORBAX_PARAMS, ORBAX_UNMAPPED, ORBAX_MANIFEST}

    def stale(rel: Path) -> bool:
        return rel.parts[0] in stale_folders or rel.name.endswith(STALE_WEIGHT_SUFFIXES)

    for src in sorted(old.rglob("*")):
        rel = src.relative_to(old)
        dst = new / rel
        if src.is_dir() and not src.is_symlink():
            if not stale(rel):
                dst.mkdir(parents=True, exist_ok=True)
            continue
        if dst.exists() or dst.is_symlink() or stale(rel):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
            continue
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot save to {target}: it is a file, not a folder")
    if target.is_dir() and any(target.iterdir()) and not is_model_folder(target) and not overwrite:
        raise ValueError(
            f"cannot save to {target}: it is a non-empty folder that holds no model; pass overwrite=True to save "
            "into it (its other files are kept)"
        )


@contextmanager
def atomic_folder(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temp folder beside ``path``; when the block completes it replaces ``path`` by rename.

    Files of an existing ``path`` that the block did not write are carried over (older weights excepted).
    If the block raises, the temp folder is removed and ``path`` is untouched."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a string or os.PathLike, got {type(path).__name__}")
    if not os.fspath(path):
        raise ValueError("path is empty")
    target = Path(os.path.realpath(os.path.expanduser(os.fspath(path))))
    _check_target(target, overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(temp_folder(str(target)))  # removed on SIGTERM, and by the next save after a SIGKILL
    try:
        os.chmod(tmp, stat.S_IMODE(target.stat().st_mode) if target.is_dir() else 0o777 & ~umask())
        yield tmp
        _check_target(target, overwrite)  # it may have changed while we wrote
        if target.is_dir():
            _carry_over(target, tmp)
        for folder in sorted({p.parent for p in tmp.rglob("*")} | {tmp}, key=lambda p: -len(p.parts)):
            fsync_path(folder)
        _swap_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        release(str(tmp))
    fsync_path(target.parent)


def _make_hidden_folder(target: Path, kind: str) -> Path:
    """A new empty ``.<name>.<kind>-<random>`` folder beside ``target``, with the permissions the umask gives
    a new folder (or those of an existing ``target``), not ``mkdtemp``'s owner-only 0o700."""
    for _ in range(100):
        folder = target.parent / f".{target.name}.{kind}-{secrets.token_hex(4)}"
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        if target.is_dir():
            os.chmod(folder, stat.S_IMODE(target.stat().st_mode))
        return folder
    raise OSError(f"could not create a temp folder beside {target}")


def _swap_into_place(tmp: Path, target: Path) -> None:
    """rename(tmp, target); an existing non-empty target is first moved aside, and removed once replaced."""
    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        os.replace(tmp, target)  # POSIX rename replaces an empty directory atomically
        return
    aside = _make_hidden_folder(target, "old")
    os.replace(target, aside)  # onto the empty folder mkdtemp made
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)


def write_plan_files(folder: Path, plan: FolderPlan, tensors: dict[str, dict[str, np.ndarray]] | None) -> None:
    """Write a plan's JSON files, copies and (when given) weight files into ``folder``."""
    for rel, src in plan.copies.items():
        _copy_file(Path(src), folder / rel)
    for rel, data in plan.json_files.items():
        _write_json(folder / rel, data)
    for rel, file_tensors in (tensors or {}).items():
        _write_safetensors(folder / rel, file_tensors)


def write_model_folder(path: str | os.PathLike, plan: FolderPlan, params, overwrite: bool = False) -> Path:
    """Write ``plan`` with ``params`` as a sentence-transformers folder at ``path``, atomically."""
    tensors = plan_tensors(plan, params)  # before touching the disk: a params mismatch fails here
    with atomic_folder(path, overwrite) as tmp:
        write_plan_files(tmp, plan, tensors)
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def save_model(plan: FolderPlan, params, path: str | os.PathLike, *, safe_serialization: bool = True,
               overwrite: bool = False) -> Path:
    """A model's ``folder_plan()`` and current params as a sentence-transformers folder at ``path``, atomically."""
    if not safe_serialization:
        raise ValueError("jaxst writes safetensors only (safe_serialization=False would mean a pickled .bin file)")
    return write_model_folder(path, plan, params, overwrite=overwrite)


# ---------------------------------------------------------------------------------------- orbax


def _orbax():
    try:
        import orbax.checkpoint as ocp
    except ImportError:
        raise ImportError("orbax checkpoints need orbax-checkpoint: pip install orbax-checkpoint") from None
    return ocp


def save_orbax(model, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """A model as a native checkpoint folder: ``model.params`` as an orbax ``StandardCheckpointer``
    checkpoint in ``params/``, beside the config and tokenizer files of its sentence-transformers folder and
    a ``jaxst_orbax.json`` manifest that says which params go into which safetensors file on the way back.

    Restore the params with ``restore_orbax_params``; turn the folder back into a sentence-transformers
    folder with ``orbax_to_folder``."""
    ocp = _orbax()
    plan = plan_for(model)
    plan_tensors(plan, model.params)  # fail early if the params do not fit the plan
    manifest = {
        "format": ORBAX_FORMAT,
        "version": 1,
        "model_class": plan.model_class,
        "jaxst_version": _jaxst_version(),
        "weights": [e.to_json() for e in plan.weights],
        "unmapped": sorted(plan.unmapped),
    }
    with atomic_folder(path, overwrite) as tmp:
        write_plan_files(tmp, plan, None)
        for rel, extra in plan.unmapped.items():
            _write_safetensors(tmp / ORBAX_UNMAPPED / rel, extra)
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save((tmp / ORBAX_PARAMS).absolute(), model.params)
            checkpointer.wait_until_finished()
        _write_json(tmp / ORBAX_MANIFEST, manifest)
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def read_orbax_manifest(path: str | os.PathLike) -> dict:
    folder = Path(path)
    file = folder / ORBAX_MANIFEST
    if not file.is_file():
        raise ValueError(f"{folder} is not a jaxst orbax checkpoint (no {ORBAX_MANIFEST})")
    with open(file, encoding="utf-8") as f:
        manifest = json.load(f)
    if manifest.get("format") != ORBAX_FORMAT:
        raise ValueError(f"{file} is not a jaxst orbax manifest (format {manifest.get('format')!r})")
    if not (folder / ORBAX_PARAMS).is_dir():
        raise ValueError(f"{folder} has no {ORBAX_PARAMS}/ checkpoint folder")
    return manifest


def restore_orbax_params(path: str | os.PathLike, target=None):
    """The params saved by ``save_orbax``. With ``target`` (e.g. ``model.params``) they come back with its
    structure, dtypes and shardings: ``model.params = restore_orbax_params(folder, model.params)``; without
    one, as a nested dict with string keys."""
    ocp = _orbax()
    read_orbax_manifest(path)
    folder = (Path(path) / ORBAX_PARAMS).absolute()
    with ocp.StandardCheckpointer() as checkpointer:
        if target is None:
            return checkpointer.restore(folder)
        import jax

        return checkpointer.restore(folder, jax.tree.map(ocp.utils.to_shape_dtype_struct, target))


def orbax_to_folder(src: str | os.PathLike, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """A ``save_orbax`` folder back to a sentence-transformers folder (safetensors in PyTorch layout)."""
    from safetensors.numpy import load_file

    src = Path(src)
    manifest = read_orbax_manifest(src)
    skip = {ORBAX_MANIFEST, ORBAX_PARAMS, ORBAX_UNMAPPED}
    copies = {
        str(p.relative_to(src)): p for p in sorted(src.rglob("*"))
        if p.is_file() and p.relative_to(src).parts[0] not in skip
    }
    plan = FolderPlan(
        str(manifest["model_class"]),
        json_files={},
        copies=copies,
        weights=[WeightsEntry.from_json(e) for e in manifest["weights"]],
        unmapped={rel: load_file(str(src / ORBAX_UNMAPPED / rel)) for rel in manifest.get("unmapped", [])},
    )
    return write_model_folder(path, plan, restore_orbax_params(src), overwrite=overwrite)


__all__ = [
    "FolderPlan",
    "WeightsEntry",
    "atomic_folder",
    "cross_encoder_plan",
    "orbax_to_folder",
    "restore_orbax_params",
    "save_model",
    "save_orbax",
    "sentence_transformer_plan",
    "unmapped_tensors",
    "write_model_folder",
]
