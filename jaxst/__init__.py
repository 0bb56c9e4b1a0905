"""jaxst: sentence-transformers as pure, jitted JAX functions over a params pytree."""

from jaxst import util
from jaxst.quantization import quantize_embeddings
from jaxst.sentence_transformer import SentenceTransformer

__version__ = "0.1.0"
__all__ = ["SentenceTransformer", "quantize_embeddings", "util", "__version__"]
