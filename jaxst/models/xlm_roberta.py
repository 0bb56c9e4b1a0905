"""XLM-RoBERTa and RoBERTa encoders: BERT's layers with RoBERTa position ids and no token types.

The PyTorch ``XLMRobertaModel`` and ``RobertaModel`` are the same network, and that network is BERT's
(``jaxst.models.bert``) with two differences, both switched on here:

- position ids start after the padding index: real tokens get ``pad_token_id + 1 + i``, padding
  keeps ``pad_token_id`` (``BertConfig.position_offset``, set by ``ROBERTA_OVERRIDES``);
- the tokenizer emits no token type ids, so every position uses row 0 of the token type table.

Their checkpoints, saved from task models such as ``XLMRobertaForMaskedLM``, prefix keys with
``roberta.`` (PyTorch's ``base_model_prefix``), whichever of the two the model is.
"""

from __future__ import annotations

from jaxst.models.bert import BertModel

# The BertConfig fields that make BERT RoBERTa; config.json supplies the rest (pad_token_id: 1, ...).
ROBERTA_OVERRIDES = {"position_offset": True}


class XLMRobertaModel(BertModel):
    """Token states (B, T, H) from input ids and attention mask, for RoBERTa and XLM-RoBERTa."""

    uses_token_types = False
    base_model_prefix = "roberta"
