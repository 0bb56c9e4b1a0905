"""Chat templates as transformers reads and renders them: the Jinja template of a tokenizer folder, rendered
in the same sandboxed Jinja environment (``transformers.utils.chat_template_utils``), so the text, and so
the token ids, are those of ``tokenizer.apply_chat_template``.

    folder ──chat_template.jinja, additional_chat_templates/*.jinja, or tokenizer_config.json's
             "chat_template"──▶ template source(s)
    messages + special tokens (bos_token, eos_token, ...) + keyword variables ──render──▶ the prompt string

Chat templates from the Hub are untrusted code: like transformers, they run in Jinja's immutable sandbox
(jinja2 >= 3.1.6, the first without its known sandbox escapes).
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path

CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"

# The named special tokens transformers' tokenizers know (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    return data if isinstance(data, dict) else {}


def read_chat_template(folder: str | Path) -> str | dict[str, str] | None:
    """The folder's chat template as transformers loads it: ``chat_template.jinja`` (and named templates in
    ``additional_chat_templates/``, which make it a dict with the file's under ``"default"``), else
    ``tokenizer_config.json``'s ``chat_template`` (a string, or a list of ``{"name", "template"}``); None
    when there is none."""
    folder = Path(folder)
    templates = {}
    if (folder / CHAT_TEMPLATE_FILE).is_file():
        templates["default"] = (folder / CHAT_TEMPLATE_FILE).read_text(encoding="utf-8")
    if (folder / CHAT_TEMPLATE_DIR).is_dir():
        for file in sorted((folder / CHAT_TEMPLATE_DIR).glob("*.jinja")):
            templates[file.name.removesuffix(".jinja")] = file.read_text(encoding="utf-8")
    if templates:
        return templates["default"] if list(templates) == ["default"] else templates
    template = _read_json(folder / "tokenizer_config.json").get("chat_template")
    if isinstance(template, (list, tuple)):
        return {t["name"]: t["template"] for t in template}
    return template


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # an AddedToken as tokenizer_config.json stores it
        value = value.get("content")
    return value if isinstance(value, str) else None


def special_tokens_map(folder: str | Path) -> dict[str, str]:
    """The named special tokens a chat template sees as variables (``tokenizer.special_tokens_map``):
    ``bos_token``, ``eos_token``, ... where set, and a tokenizer's model-specific named tokens (an
    ``extra_special_tokens`` dict, other ``*_token`` strings)."""
    folder = Path(folder)
    config = {**_read_json(folder / "special_tokens_map.json"), **_read_json(folder / "tokenizer_config.json")}
    named = {}
    for key, value in config.items():
        added = isinstance(value, dict) and value.get("__type") == "AddedToken"
        if key in SPECIAL_TOKENS_ATTRIBUTES or (key.endswith("_token") and (isinstance(value, str) or added)):
            if (text := _token_text(value)) is not None:
                named[key] = text
    extra = config.get("extra_special_tokens", config.get("additional_special_tokens"))
    if isinstance(extra, dict):
        named.update({k: t for k, v in extra.items() if (t := _token_text(v)) is not None})
    return named


@functools.lru_cache(maxsize=32)
def compile_template(source: str):
    """A template compiled in transformers' chat-template environment: the immutable sandbox with
    ``trim_blocks`` and ``lstrip_blocks``, loop controls, a ``{% generation %}`` block (rendered as its body),
    and the globals and filters templates use (``raise_exception``, ``strftime_now``, ``tojson``, ``dict``,
    ``namespace``)."""
    try:
        import jinja2
        from jinja2.ext import Extension, loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ImportError("chat templates need jinja2: pip install 'jinja2>=3.1.6'") from None
    version = tuple(int(p) if p.isdigit() else 0 for p in jinja2.__version__.split(".")[:3])
    if version < (3, 1, 6):
        raise ImportError(f"chat templates need jinja2>=3.1.6 (older versions have sandbox escapes); "
                          f"found {jinja2.__version__}")

    class Generation(Extension):  # transformers' AssistantTracker, without the tracking
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:  # dict() without attribute access to the dict type
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):  # no underscore-prefixed attributes
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


class ChatTemplate:
    """A tokenizer folder's chat template and named special tokens; ``render`` is
    ``tokenizer.apply_chat_template(messages, tokenize=False, **variables)``."""

    def __init__(self, template: str | dict[str, str], special_tokens: dict[str, str] | None = None):
        if not isinstance(template, (str, dict)) or not template:
            raise TypeError(f"a chat template is a Jinja string or a dict of named ones, got {template!r:.80}")
        self.template = template
        self.special_tokens = dict(special_tokens or {})

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatTemplate | None:
        template = read_chat_template(folder)
        return None if template is None else cls(template, special_tokens_map(folder))

    def source(self, name: str | None = None) -> str:
        """The template text: ``name`` picks one of several named templates (else ``"default"``), or is a
        template itself, as ``apply_chat_template(chat_template=...)`` takes it."""
        if isinstance(self.template, str):
            return self.template if name is None else name
        if name is None:
            if "default" not in self.template:
                raise ValueError(f"this tokenizer has several chat templates ({sorted(self.template)}) and none "
                                 "named 'default'; pass chat_template=<name>")
            return self.template["default"]
        return self.template.get(name, name)

    def render(self, messages: list[dict], add_generation_prompt: bool = False, chat_template: str | None = None,
               **variables) -> str:
        """The prompt string of one conversation. Messages' None-valued keys are dropped, as transformers
        does; ``variables`` override the special tokens of the same name."""
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        return compile_template(self.source(chat_template)).render(
            messages=messages, tools=None, documents=None, add_generation_prompt=add_generation_prompt,
            **{**self.special_tokens, **variables},
        )


__all__ = ["CHAT_TEMPLATE_FILE", "ChatTemplate", "compile_template", "read_chat_template", "special_tokens_map"]
