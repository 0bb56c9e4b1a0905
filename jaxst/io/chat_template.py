"""Chat templates as transformers reads and renders them: the Jinja template of a tokenizer folder, rendered
in the same sandboxed Jinja environment (``transformers.utils.chat_template_utils``), so the text, and so
the token ids, are those of ``tokenizer.apply_chat_template``.

    folder ──chat_template.jinja, additional_chat_templates/*.jinja, or tokenizer_config.json's
             "chat_template"──▶ template source(s)
    messages + special tokens (bos_token, eos_token, ...) + keyword variables ──render──▶ the prompt string

Chat templates from the Hub are untrusted code: like transformers, they run in Jinja's immutable sandbox
(jinja2 >= 3.1.6, the first without its known sandbox escapes). The sandbox stops escapes, not exhaustion:
``{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}`` renders for hours and
emits nothing, and a template rendering 170 MB per pair had the process killed at 24 GB. So every render here
is bounded (``TemplateLimitError``, a ValueError naming the template and the limit):

- time: ``RENDER_SECONDS`` (5 s) of wall clock per render, checked by a trace function on every line the
  compiled template runs (``sys.settrace`` while rendering, only on the template's own frames, the previous
  tracer restored after); Qwen3-Reranker's layout renders a pair in 0.3 ms, with a 100 MB document in 0.07 s;
- output: ``RENDER_FIXED_CHARS`` (1 Mi characters) plus ``RENDER_INPUT_FACTOR`` (4) times the text the
  template is given (messages and variables), counted while ``generate`` streams the output, so a long
  document still renders whole (as transformers renders it) but a template cannot multiply it without bound;
- one-step allocations: ``*`` repeating a string or list, ``**`` and ``%``-formatting, and calls with an
  integer argument (``ljust``, ``center``, ...) past that output cap are refused before they allocate.

Valid templates render to exactly what ``tokenizer.apply_chat_template(..., tokenize=False)`` gives.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from jaxst.io.folder import read_json

CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_DIR = "additional_chat_templates"

# The named special tokens transformers' tokenizers know (PreTrainedTokenizerBase.SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKENS_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                             "mask_token")

# Render limits (module docstring): wall-clock seconds per render; output characters allowed beyond the
# inputs' own text, and per character of it.
RENDER_SECONDS = 5.0
RENDER_FIXED_CHARS = 1 << 20
RENDER_INPUT_FACTOR = 4
TEMPLATE_FILENAME = "<template>"  # the code filename of templates compiled from a string
# The output cap of the render in progress (this thread / context), read by the sandbox's operator checks.
_OUTPUT_CAP = contextvars.ContextVar("jaxst_chat_template_output_cap", default=RENDER_FIXED_CHARS)
_FORMAT_WIDTH = re.compile(r"%[-#0 +]*(\d+)?(?:\.(\d+))?|\{[^{}]*?:[^{}]*?(\d+)[^{}]*\}")


class TemplateLimitError(ValueError):
    """A chat template ran past a render limit (time, output size, or a single oversized allocation)."""



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
    template = read_json(folder / "tokenizer_config.json", required=False).get("chat_template")
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
    config = {**read_json(folder / "special_tokens_map.json", required=False),
              **read_json(folder / "tokenizer_config.json", required=False)}
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

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        """Refuses one-step allocations past the render's output cap before they happen (module docstring)."""

        intercepted_binops = frozenset(("*", "**", "%"))

        def call_binop(self, context, operator, left, right):
            _check_binop(operator, left, right, _OUTPUT_CAP.get())
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (jinja's signature)
            cap = _OUTPUT_CAP.get()
            for value in (*args, *kwargs.values()):
                if isinstance(value, int) and not isinstance(value, bool) and abs(value) > cap:
                    raise TemplateLimitError(f"a call with the integer argument {value} (past the output cap of "
                                             f"{cap} characters)")
            method = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
            if getattr(method, "__name__", None) in ("format", "format_map") and isinstance(
                    getattr(method, "__self__", None), str):
                _check_format(method.__self__, cap)
            return super().call(__context, __obj, *args, **kwargs)

    env = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[Generation, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(source)


def _check_format(text: str, cap: int) -> None:
    for match in _FORMAT_WIDTH.finditer(text):
        if any(g and int(g) > cap for g in match.groups()):
            raise TemplateLimitError(f"a format width in {match.group(0)!r:.60} past the output cap of {cap} "
                                     "characters")


def _check_binop(operator: str, left, right, cap: int) -> None:
    """``*`` repeating a sequence, ``**`` on integers and ``%``-formatting, checked before they allocate."""
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > cap:
                raise TemplateLimitError(f"repeating a {type(seq).__name__} of {len(seq)} items {times} times (past "
                                         f"the output cap of {cap} characters)")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and right > 0 and left.bit_length() * right > 8 * cap:
            raise TemplateLimitError(f"an integer power {left} ** {right} (past the output cap of {cap} characters)")
    elif operator == "%" and isinstance(left, str):
        _check_format(left, cap)


def _text_size(value) -> int:
    """Characters of text in a template's inputs (strings inside dicts and lists)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_size(k) + _text_size(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_text_size(v) for v in value)
    return 0


@contextlib.contextmanager
def _deadline(seconds: float, failure):
    """Raise ``failure()`` in the template's own code once ``seconds`` have passed: a trace function on the
    frames of compiled templates (other code runs untraced), the thread's previous tracer restored after.
    It raises once, so Jinja's traceback rewriting (which runs code named like the template) is left alone."""
    end = time.monotonic() + seconds
    state = {"fired": None}

    def local(frame, event, arg):
        if state["fired"] is None and time.monotonic() > end:
            state["fired"] = failure()
            raise state["fired"]
        return local if state["fired"] is None else None

    def calls(frame, event, arg):
        return local(frame, event, arg) if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield state
    finally:
        sys.settrace(previous)
    if state["fired"] is not None:  # raised, and swallowed by some code between the template and here
        raise state["fired"]


class ChatTemplate:
    """A tokenizer folder's chat template and named special tokens; ``render`` is
    ``tokenizer.apply_chat_template(messages, tokenize=False, **variables)``, within the render limits.
    ``where`` names the template in errors (the file it was read from)."""

    def __init__(self, template: str | dict[str, str], special_tokens: dict[str, str] | None = None,
                 where: str | Path | None = None):
        if not isinstance(template, (str, dict)) or not template:
            raise TypeError(f"a chat template is a Jinja string or a dict of named ones, got {template!r:.80}")
        self.template = template
        self.special_tokens = dict(special_tokens or {})
        self.where = None if where is None else str(where)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ChatTemplate | None:
        template = read_chat_template(folder)
        if template is None:
            return None
        folder = Path(folder)
        if (folder / CHAT_TEMPLATE_FILE).is_file() or (folder / CHAT_TEMPLATE_DIR).is_dir():
            where = folder / (CHAT_TEMPLATE_FILE if isinstance(template, str) else CHAT_TEMPLATE_DIR)
        else:
            where = f"{folder / 'tokenizer_config.json'} (its chat_template)"
        return cls(template, special_tokens_map(folder), where)

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
        values = {"messages": messages, "tools": None, "documents": None,
                  "add_generation_prompt": add_generation_prompt, **self.special_tokens, **variables}
        template = compile_template(self.source(chat_template))
        name = "the chat template" + (f" {self.where}" if self.where else "") + (
            f" {chat_template!r:.60}" if chat_template is not None and isinstance(self.template, dict) else "")
        cap = RENDER_FIXED_CHARS + RENDER_INPUT_FACTOR * _text_size(values)

        def timeout():
            return TemplateLimitError(
                f"{name} ran past its time limit of {RENDER_SECONDS:g} s for one render (a "
                "template loop that does not end); chat templates from model folders are untrusted code")

        parts, size = [], 0
        token = _OUTPUT_CAP.set(cap)
        try:
            with _deadline(RENDER_SECONDS, timeout):
                for part in template.generate(**values):
                    size += len(part)
                    if size > cap:
                        raise TemplateLimitError(
                            f"{name} rendered more than its output limit of {cap} characters "
                            f"({RENDER_FIXED_CHARS} + {RENDER_INPUT_FACTOR} x the {_text_size(values)} characters "
                            "of text it was given)")
                    parts.append(part)
        except TemplateLimitError as e:
            if str(e).startswith(name):
                raise
            raise TemplateLimitError(f"{name} asked for {e}") from None
        finally:
            _OUTPUT_CAP.reset(token)
        return "".join(parts)


__all__ = ["CHAT_TEMPLATE_FILE", "ChatTemplate", "TemplateLimitError", "compile_template", "read_chat_template",
           "special_tokens_map"]
