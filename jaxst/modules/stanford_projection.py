"""A Stanford-NLP ColBERT checkpoint's projection: a bias-free linear whose ``linear.weight`` sits beside the
encoder's tensors. No modules.json names it (jaxst builds it for a Stanford folder); it is a Dense head and is
saved as a Dense module (``dense_config`` for both: the Dense the weight's shape describes)."""

from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext

KIND = ModuleKind(
    kind="stanford_projection",
    class_names=(),  # never read from modules.json
    type_path=None,  # saved as a Dense (save)
    v6_type_path=None,
    folder_name=None,
    head=True,
    head_params=True,
    forward="jaxst.modules.dense:Dense",
    save="jaxst.modules.stanford_projection:save",
)

WEIGHT = "linear.weight"  # its tensor, among the encoder's


def dense_config(in_features: int, out_features: int) -> dict:
    """The token-level Dense config this projection is, loaded and saved."""
    return {"in_features": int(in_features), "out_features": int(out_features), "bias": False,
            "activation_function": "torch.nn.modules.linear.Identity",
            "module_input_name": "token_embeddings", "module_output_name": "token_embeddings"}


def save(spec, context: SaveContext) -> ModuleFiles:
    """Written as the Dense module it is, sized by its kernel (``(in, out)``), in its own folder."""
    kernel = context.head_params["linear"]["kernel"]
    return ModuleFiles({"config.json": dense_config(kernel.shape[0], kernel.shape[1])},
                       ((("heads", context.head), ""),), kind="dense")
