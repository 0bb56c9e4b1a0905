"""The folder format of causal-LM rerankers (Qwen3-Reranker style) and their prompts: what ``CrossEncoder``
reads beyond the BERT family's, the ``LogitScore`` module and how (query, document) pairs become token ids.

sentence-transformers 6.3 builds such a model from a ``*ForCausalLM`` folder as a ``Transformer`` with
``transformer_task="text-generation"`` and a ``LogitScore(true_token_id=id("yes"), false_token_id=id("no"))``
module, and saves it so (``modules.json``: Transformer + ``1_LogitScore/config.json``). Its pairs become
token ids one of two ways, chosen by the Transformer's ``modality_config``:

- ``"message"`` (the tokenizer has a chat template): each pair is the conversation
  ``[{"role": "query", "content": q}, {"role": "document", "content": d}]`` (content as
  ``[{"type": "text", "text": ...}]`` for "structured" templates), a prompt a leading ``system`` message;
  rendered by the chat template and tokenized without special tokens, truncated on the right to
  ``max_seq_length``; in a row cut to that length, the template's fixed tail (the assistant prefix the
  score is read after) is written back over its last tokens (``restore_suffix``);
- ``"text"`` only: the tokenizer's own pair encoding, the prompt prepended to the query, as for BERT.

Only a prefix of a long rendering is tokenized: tokenizing whole a prompt that is cut to ``max_seq_length``
anyway costs ~200 bytes of memory per character (a 170 MB rendering had the process killed at 24 GB). The
tokenizer's pipeline is local: the normalizer works on characters, the pre-tokenizer splits the text into
words (regex / whitespace / byte-level splits, each decided by the text up to the next word), and the model
tokenizes each word on its own. So the first ``max_seq_length`` tokens of a prefix are those of the whole
text once two whole words follow the word the last of them is in (``settled``); the prefix starts at
``PREFIX_CHARS_PER_TOKEN`` characters per token and grows 4x until that holds, and a text whose words never
settle (a tokenizer without a pre-tokenizer, one endless word) is tokenized whole, as before. Measured on the
tests' tiny byte-level BPE, max_seq_length 224: a 10 MB document took 2.1 GB (peak RSS) and 16.5 s whole;
as a 3.6 kB prefix, 3 ms and no measurable memory. The chat template itself renders within
``jaxst.io.chat_template``'s limits.

The scores, ``logit(yes) - logit(no)`` at the last token, are ``jaxst.models.causal_lm``'s; one label, so the
default activation is sigmoid, which makes them ``P(yes)`` of the two-way softmax.
"""

from __future__ import annotations

import dataclasses

from jaxst.io.chat_template import ChatTemplate, TemplateLimitError
from jaxst.io.tokenizer import Tokenizer

PAIR_ROLES = ("query", "document")
PAIR_ROLE_PROBES = (("alpha", "bravo"), ("charlie", "bravo"), ("alpha", "foxtrot"))  # as sentence-transformers
# Chat-template text that marks list-of-parts message content ("structured"), and model types known otherwise.
STRUCTURED_PATTERNS = ("content[0]", ".type", "'type'", '"type"', "item.type", "message.content[")
KNOWN_MESSAGE_FORMATS = {"apertus": "flat", "deepseek_v3": "flat", "gpt_oss": "flat", "seed_oss": "flat"}
# apply_chat_template's size arguments: tokenization settings, never template variables.
SIZE_KWARGS = ("padding", "truncation", "max_length", "return_tensors")
# Characters per token of the first prefix tokenized (then 4x, 16x, ... until settled; see the docstring).
PREFIX_CHARS_PER_TOKEN = 16


def is_causal_lm(hf_config: dict) -> bool:
    """sentence-transformers' test for a plain folder: ``architectures[0]`` ends with ``ForCausalLM``."""
    archs = hf_config.get("architectures") or []
    return bool(archs) and str(archs[0]).endswith("ForCausalLM")


def message_format(model_type: str | None, template) -> str:
    """"flat" (content is the text) or "structured" (a list of typed parts), as sentence-transformers infers it."""
    if model_type in KNOWN_MESSAGE_FORMATS:
        return KNOWN_MESSAGE_FORMATS[model_type]
    if not isinstance(template, str) or not template:
        return "structured"
    return "structured" if any(p in template for p in STRUCTURED_PATTERNS) else "flat"


def default_transformer_config(model_type: str | None, template) -> dict:
    """The Transformer config sentence-transformers infers for a ``*ForCausalLM`` folder (and saves)."""
    modalities = {"text": {"method": "forward", "method_output_name": "logits"}}
    if template is not None:
        modalities["message"] = {**modalities["text"], "format": message_format(model_type, template)}
    return {"transformer_task": "text-generation", "modality_config": modalities, "module_output_name": "causal_logits"}


def default_logit_score(tokenizer: Tokenizer, where) -> dict:
    """``LogitScore(true_token_id=id("yes"), false_token_id=id("no"))``, as sentence-transformers builds it."""
    ids = {t: tokenizer.backend.token_to_id(t) for t in ("yes", "no")}
    if None in ids.values():
        raise ValueError(
            f"the tokenizer of {where} has no 'yes' and/or 'no' token, which a causal-LM reranker scores by default "
            "(sentence-transformers' LogitScore); save the model with a 1_LogitScore module naming its tokens"
        )
    return {"true_token_id": ids["yes"], "false_token_id": ids["no"], "module_input_name": "causal_logits"}


def logit_score_tokens(config: dict, where) -> tuple[int, int | None]:
    """(true_token_id, false_token_id or None) from a LogitScore module config."""
    if config.get("module_input_name", "causal_logits") != "causal_logits":
        raise ValueError(f"{where}: LogitScore reading {config['module_input_name']!r} is not supported")
    true, false = config.get("true_token_id"), config.get("false_token_id")
    if not isinstance(true, int) or (false is not None and not isinstance(false, int)):
        raise ValueError(f"{where}: LogitScore needs an integer true_token_id (and false_token_id or null), "
                         f"got {true!r} and {false!r}")
    return true, false


@dataclasses.dataclass
class PromptIds:
    """One prompt's token ids, in the shape ``Tokenizer.pad`` reads (``ids``, ``type_ids``)."""

    ids: list[int]

    @property
    def type_ids(self) -> list[int]:
        return [0] * len(self.ids)


class PairPrompts:
    """(query, document) pairs -> token ids through the chat template, as sentence-transformers'
    ``Transformer`` preprocesses pairs for the "message" modality (see the module docstring).

    ``processing_kwargs``: the Transformer's saved ones; their ``"chat_template"`` entries are template
    variables (``restore_suffix`` a switch), and size settings elsewhere are not supported."""

    def __init__(self, tokenizer: Tokenizer, template: ChatTemplate, fmt: str, processing_kwargs: dict | None,
                 where):
        kwargs = dict(processing_kwargs or {})
        chat = dict(kwargs.pop("chat_template", None) or {})
        text = {k: v for k, v in (kwargs.pop("text", None) or {}).items() if k != "logits_to_keep"}
        unsupported = {k: v for k, v in {**kwargs, "text": text}.items() if v} | {
            k: chat[k] for k in SIZE_KWARGS if k in chat}
        if unsupported:
            raise ValueError(f"{where}: jaxst does not support the Transformer's processing_kwargs {unsupported}")
        self.restore_suffix = bool(chat.pop("restore_suffix", True))
        # apply_chat_template sees sentence-transformers' (empty) common kwargs as a template variable too
        self.variables = {"common_kwargs": {}, **chat}
        self.tokenizer, self.template, self.format, self.where = tokenizer, template, fmt, where
        self._untruncated = None
        self._suffixes: dict[str, list[int]] = {}
        self._roles_checked = False

    def _message(self, role: str, text: str) -> dict:
        return {"role": role, "content": text if self.format == "flat" else [{"type": "text", "text": text}]}

    def conversation(self, query: str, document: str, prompt: str | None = None) -> list[dict]:
        messages = [self._message(role, text) for role, text in zip(PAIR_ROLES, (query, document))]
        return [self._message("system", prompt), *messages] if prompt else messages

    def render(self, conversation: list[dict], **extra) -> str:
        return self.template.render(conversation, **{**self.variables, **extra})

    def check_pair_roles(self) -> None:
        """sentence-transformers refuses a template that drops the query or the document (a ChatML
        template knows only system/user/assistant): render probe pairs and compare."""
        if self._roles_checked:
            return
        probe = {k: v for k, v in self.variables.items() if k != "common_kwargs"}
        try:
            base, *varied = [self.template.render(self.conversation(q, d), **probe) for q, d in PAIR_ROLE_PROBES]
        except TemplateLimitError:
            raise
        except Exception as e:  # a template may raise on roles it does not know
            failure = f"it raised {type(e).__name__}: {e}"
        else:
            dropped = [repr(role) for role, text in zip(PAIR_ROLES, varied) if text == base]
            failure = f"the {' and '.join(dropped)} content does not reach the rendered prompt" if dropped else None
        if failure is not None:
            raise ValueError(
                f"The chat template of {self.where} cannot carry a 'query'/'document' pair ({failure}). Pairs are "
                "rendered as one message per role, so the template must render both roles (as sentence-transformers "
                "requires); save the model with such a chat_template.jinja"
            )
        self._roles_checked = True

    def _untruncated_backend(self):
        if self._untruncated is None:
            from tokenizers import Tokenizer as HFTokenizer

            untruncated = HFTokenizer.from_str(self.tokenizer.backend.to_str())
            untruncated.no_truncation()
            untruncated.no_padding()
            self._untruncated = untruncated
        return self._untruncated

    def _untruncated_ids(self, text: str) -> list[int]:
        return self._untruncated_backend().encode(text, add_special_tokens=False).ids

    def truncated_ids(self, texts: list[str]) -> list[list[int]]:
        """The ids of each text tokenized whole and cut to ``max_seq_length``, tokenizing only a prefix of a
        long text (module docstring): the first ``max_seq_length`` tokens of a prefix, once settled."""
        n = self.tokenizer.max_length
        out: list[list[int] | None] = [None] * len(texts)
        pending, size = list(range(len(texts))), PREFIX_CHARS_PER_TOKEN * n
        while pending:
            whole = [i for i in pending if len(texts[i]) <= size]
            for i, encoding in zip(whole, self.tokenizer.encode_ids([texts[i] for i in whole],
                                                                    add_special_tokens=False)):
                out[i] = list(encoding.ids)
            cut = [i for i in pending if len(texts[i]) > size]
            prefixes = self._untruncated_backend().encode_batch([texts[i][:size] for i in cut],
                                                                add_special_tokens=False) if cut else []
            pending = []
            for i, encoding in zip(cut, prefixes):
                if settled(encoding.word_ids, n):
                    out[i] = list(encoding.ids[:n])
                    if getattr(self.tokenizer, "id_rows", None) is not None:  # as encode_ids checks its rows
                        self.tokenizer.check_ids([PromptIds(out[i])])
                else:
                    pending.append(i)
            size *= 4
        return out

    def suffix(self, conversation: list[dict]) -> list[int]:
        """The template's fixed tail after the last message, as token ids: the longest common token suffix
        of the conversation rendered with its (non-system) contents replaced by "0" and by "1 2 3 4"."""
        def skeleton(filler):
            return [m if m["role"] == "system" else self._message(m["role"], filler) for m in conversation]

        key = repr(skeleton(""))
        if key not in self._suffixes:
            suffix = []
            try:
                first, second = (self._untruncated_ids(self.render(skeleton(f))) for f in ("0", "1 2 3 4"))
                count = 0
                for a, b in zip(reversed(first), reversed(second)):
                    if a != b:
                        break
                    count += 1
                if 0 < count < min(len(first), len(second)):
                    suffix = first[len(first) - count:]
            except TemplateLimitError:  # a hostile template, not a tail that cannot be found
                raise
            except Exception:  # as sentence-transformers: never let the suffix break tokenization
                suffix = []
            self._suffixes[key] = suffix
        return self._suffixes[key]

    def encode(self, pairs: list[tuple[str, str]], prompt: str | None = None) -> list[PromptIds]:
        """Token ids per pair, truncated to ``max_seq_length``, unpadded."""
        self.check_pair_roles()
        conversations = [self.conversation(q, d, prompt) for q, d in pairs]
        out = []
        for conversation, ids in zip(conversations, self.truncated_ids([self.render(c) for c in conversations])):
            if self.restore_suffix and len(ids) >= self.tokenizer.max_length:  # a row cut to the limit
                tail = self.suffix(conversation)[-len(ids):]
                if tail:
                    ids[len(ids) - len(tail):] = tail
            out.append(PromptIds(ids))
        return out


def settled(word_ids: list, n: int) -> bool:
    """Whether a prefix's first ``n`` tokens are the whole text's: two whole words (pre-tokenizer splits)
    follow the word of token ``n`` (so it and the words before it ended before the cut, whatever follows)."""
    if len(word_ids) <= n or word_ids[n - 1] is None or word_ids[-1] is None:
        return False
    return word_ids[-1] >= word_ids[n - 1] + 3


__all__ = [
    "PairPrompts",
    "PromptIds",
    "default_logit_score",
    "default_transformer_config",
    "is_causal_lm",
    "logit_score_tokens",
    "message_format",
]
