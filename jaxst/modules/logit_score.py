"""LogitScore: a causal-LM reranker's score, from the LM head's rows of its label tokens (CrossEncoder)."""

from jaxst.modules._kind import ModuleKind

_PATH = "sentence_transformers.cross_encoder.modules.logit_score.LogitScore"  # new in 6.x: no older name

KIND = ModuleKind(
    kind="logit_score",
    class_names=("LogitScore",),
    type_path=_PATH,
    v6_type_path=_PATH,
    folder_name="LogitScore",
    config_required=True,
    family="CrossEncoder",
)
