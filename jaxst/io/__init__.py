"""Files: model name -> folder, the sentence-transformers folder format, weights, tokenizers."""
