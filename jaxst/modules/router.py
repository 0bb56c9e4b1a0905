"""Router: routes a text to one of several module lists by task (query / document); its structure is in
router_config.json (config.json in older saves)."""

from jaxst.modules._kind import ModuleKind

KIND = ModuleKind(
    kind="router",
    class_names=("Router",),
    type_path="sentence_transformers.models.Router",
    v6_type_path="sentence_transformers.base.modules.router.Router",
    folder_name=None,  # saved at the folder's root, each route's modules in sub-folders named as loaded
    config_files=("router_config.json", "config.json"),  # config.json: sentence-transformers' legacy name
    config_required=True,
    family="SparseEncoder",
)
