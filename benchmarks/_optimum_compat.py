"""A benchmark-only compatibility shim, written for encode_speed.py's ONNX comparison: optimum-onnx 0.1.0
(the newest; it pins transformers<4.58, see huggingface/optimum-onnx#114) under the transformers 5.x that
sentence-transformers 6.2 requires. It patches, at import, only what the BERT feature-extraction export,
onnxruntime inference and dynamic quantization need; install optimum==2.1.0 optimum-onnx==0.1.0 with
--no-deps beside onnx and onnxruntime (benchmarks/README.md). Not part of jaxst."""
# ruff: noqa
import huggingface_hub
import transformers.utils as _tu

if not hasattr(_tu, "is_offline_mode"):
    _tu.is_offline_mode = huggingface_hub.is_offline_mode

import transformers.modeling_utils as _mu

if not hasattr(_mu, "get_parameter_dtype"):
    def get_parameter_dtype(module):
        # transformers 4.x semantics: dtype of the first floating-point parameter/buffer
        last = None
        for t in list(module.parameters()) + list(module.buffers()):
            last = t.dtype
            if t.is_floating_point():
                return t.dtype
        return last
    _mu.get_parameter_dtype = get_parameter_dtype

import transformers.utils.generic as _gen
try:
    import transformers.utils.output_capturing as _oc
    for _n in ("_CAN_RECORD_REGISTRY", "OutputRecorder"):
        if not hasattr(_gen, _n) and hasattr(_oc, _n):
            setattr(_gen, _n, getattr(_oc, _n))
except ImportError:
    pass

# transformers 5 renamed AutoModelForVision2Seq -> AutoModelForImageTextToText. The top-level
# `transformers` lazy module object can get re-created during imports, so patch the class.
from transformers.utils.import_utils import _LazyModule
_RENAMED = {"AutoModelForVision2Seq": "AutoModelForImageTextToText"}
_orig_getattr = _LazyModule.__getattr__
def _compat_getattr(self, name):
    if self.__name__ == "transformers" and name in _RENAMED:
        return _orig_getattr(self, _RENAMED[name])
    return _orig_getattr(self, name)
if not getattr(_LazyModule, "_optimum_tf5_compat", False):
    _LazyModule.__getattr__ = _compat_getattr
    _LazyModule._optimum_tf5_compat = True

from transformers import PretrainedConfig as _PC
if not hasattr(_PC, "_get_non_default_generation_parameters"):
    # removed in transformers 5 (generation params no longer live in model configs)
    _PC._get_non_default_generation_parameters = lambda self: {}

# optimum's export patcher swaps in 4.53-style mask builders (signature with `cache_position`);
# transformers 5 calls them with q_length/q_offset and its own sdpa_mask already avoids vmap by
# default (use_vmap=False), so make optimum register transformers' own functions instead.
import transformers.masking_utils as _mask
import optimum.exporters.onnx.model_patcher as _mp
_mp.sdpa_mask_without_vmap = _mask.sdpa_mask
_mp.eager_mask_without_vmap = _mask.eager_mask
