"""A model's declared requirements (``config_sentence_transformers.json``'s ``"requirements"``, new in
sentence-transformers 6.3), checked on load before any module is read, as sentence-transformers checks them.

    "requirements": {"python": ">=3.10", "tokenizers": ">=0.22", "transformers": {"specifier": ">=5.15",
                     "reason": "the architecture was added in 5.15"}}

jaxst checks what it runs with: ``python`` and the packages jaxst itself imports (``RUNTIME``). A requirement
on the PyTorch stack (torch, transformers, sentence-transformers, peft, ...) describes sentence-transformers'
implementation, which jaxst does not use (it implements the architectures itself and says so when it lacks one):
it is logged and not checked. An unmet requirement is an ImportError listing each, with the model's reason and
a pip command; one that cannot be read (not a specifier, not a dict) is a warning, as there.
"""

from __future__ import annotations

import logging
import platform
import warnings
from importlib import metadata

logger = logging.getLogger(__name__)

# what jaxst imports at run time: a model's requirement on one of these is checked
RUNTIME = ("jaxst", "jax", "jaxlib", "flax", "numpy", "ml_dtypes", "tokenizers", "safetensors", "huggingface_hub",
           "huggingface-hub", "tqdm", "jinja2", "optax", "orbax-checkpoint")
ALIASES = {"pytorch": "torch"}  # sentence-transformers' __version__ block spells torch so


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


def installed_version(package: str) -> str | None:
    if package == "python":
        return platform.python_version()
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_requirements(requirements, source=None) -> None:
    """An ImportError naming every requirement of ``requirements`` that jaxst runs with and that the installed
    versions do not meet; nothing when all are met (or there are none)."""
    if not requirements:
        return
    if not isinstance(requirements, dict):
        warnings.warn(f"Ignoring the `requirements` of {source!r}: expected a dictionary of version specifiers.",
                      stacklevel=3)
        return
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    runtime = {_normal(n) for n in RUNTIME}
    unmet, install = [], []
    for package, requirement in requirements.items():
        package = ALIASES.get(package, package)
        specifier = requirement.get("specifier", "") if isinstance(requirement, dict) else requirement
        reason = requirement.get("reason", "") if isinstance(requirement, dict) else ""
        if package != "python" and _normal(package) not in runtime:
            logger.info(f"{source!r} requires {package}{specifier}: a package of the PyTorch implementation, which "
                        "jaxst does not use; not checked")
            continue
        if not isinstance(specifier, str):
            warnings.warn(f"Could not verify the {specifier!r} requirement of {source!r}: expected a version "
                          "specifier string.", stacklevel=3)
            continue
        found = installed_version(package)
        try:
            if found is not None and SpecifierSet(specifier, prereleases=True).contains(Version(found)):
                continue
        except Exception as e:  # an unparsable specifier or version warns, it does not make the model unloadable
            warnings.warn(f"Could not verify the {specifier!r} requirement of {source!r}: {e}", stacklevel=3)
            continue
        state = f"{package}=={found} is installed" if found else "it is not installed"
        unmet.append(f"- {package}{specifier}, but {state}. {reason}".rstrip())
        if package != "python":
            install.append(f'"{package}{specifier}"')
    if unmet:
        lines = [f"The model {str(source)!r} requires:" if source else "This model requires:", *unmet]
        if install:
            lines.append(f"Install compatible versions with:\n    pip install -U {' '.join(install)}")
        raise ImportError("\n".join(lines))
