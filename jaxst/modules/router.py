"""Router: routes a text to one of several module lists by task (query / document); its structure is in
router_config.json (config.json in older saves). Saved: router_config.json at the folder's root (the routes'
modules go into sub-folders named as loaded, each written by its own kind)."""

from jaxst.modules._kind import ModuleFiles, ModuleKind, SaveContext

KIND = ModuleKind(
    kind="router",
    class_names=("Router",),
    type_path="sentence_transformers.models.Router",
    v6_type_path="sentence_transformers.base.modules.router.Router",
    folder_name=None,  # saved at the folder's root, each route's modules in sub-folders named as loaded
    config_files=("router_config.json", "config.json"),  # config.json: sentence-transformers' legacy name
    config_required=True,
    family="SparseEncoder",
    save="jaxst.modules.router:save",
)


def save(spec, context: SaveContext) -> ModuleFiles:
    """router_config.json: ``types`` (sub-folder -> class path), ``structure`` (route -> sub-folders) and
    ``parameters`` (default_route, allow_empty_key), all from the family's layout (``SaveContext.settings``)."""
    layout = context.settings
    return ModuleFiles({"router_config.json": {"types": dict(layout["types"]), "structure": dict(layout["structure"]),
                                               "parameters": dict(layout["parameters"])}})
