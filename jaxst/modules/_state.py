"""What the kind files share to read a saved module's tensors (not a kind: the name starts with ``_``)."""

from __future__ import annotations


class Aliased:
    """A state dict in which a tensor saved under another of its tied names is found: ``aliases`` maps the
    name jaxst reads to the other one (transformers saves a decoder bias as ``cls.predictions.bias`` or
    ``cls.predictions.decoder.bias``; safetensors keeps one name of SparseAutoEncoder's tied encoder/decoder)."""

    def __init__(self, state_dict, aliases: dict[str, str]):
        self.sd = state_dict
        self.aliases = aliases

    def __contains__(self, key):
        return key in self.sd or (key in self.aliases and self.aliases[key] in self.sd)

    def __getitem__(self, key):
        if key not in self.sd and key in self.aliases:
            return self.sd[self.aliases[key]]
        return self.sd[key]

    def get(self, key, default=None):
        return self[key] if key in self else default

    def keys(self):
        return self.sd.keys()

    def items(self):
        return self.sd.items()
