"""int8 inference: the encoder's dense layers as int8 x int8 -> int32 matrix products (``dtype="int8"``).

    x (float32) ─▶ x / s (per input channel, from calibration)
                ─▶ per row: x ~ s_x * x_q + o_x, x_q in [-128, 127] (int8) over the row's [min, max]
                ─▶ x_q @ w_q (int32, exact) ─▶ (s_x * acc + o_x * colsum(w_q)) * s_w + bias

Weights are quantized once at load, symmetric per output column (s_w = max|w_col| / 127), and stored
in the layout of the native VNNI kernel (``jaxst.native.pack_int8_weights``); activations are
quantized per token on the fly (asymmetric: a row's [min, max] in 256 steps), so a token's scale is
its own. Transformer activations have a few
input channels tens of times larger than the rest (LayerNorm gains), which would take a per-token
scale for themselves; as SmoothQuant does, each layer divides its input channels by
s_j = sqrt(max|x_j| / max|w_j|) and multiplies the weight rows by the same s_j (the product is
unchanged; both sides are then as easy to quantize). max|x_j| comes from one calibration pass at load
over ``CALIBRATION_TEXTS``: the outlier channels are a property of the model, not of the text. It is
floored at the layer's mean over channels, so that smoothing only ever pulls the loud channels down:
a channel that was quiet on the calibration texts may not be on others, and amplifying it would let
one such value set its token's whole range.

The integer product runs as one native AVX-512 VNNI pass on a single CPU device whose CPU has it,
and as XLA's int8 dot everywhere else (``JAXST_NATIVE=0``, other CPUs, accelerators): integer sums
are exact and the float steps around them are the same XLA ops, so both give identical embeddings.

Applied from outside the architectures, which know nothing of int8: their dense layers are ``nnx.Linear``
modules that are only ever called (``jaxst.models.layers``). Calibration (``calibrate``) runs one forward of a
copy of the model whose ``nnx.Linear`` nodes are wrapped by ``ObservedLinear``, which sows each layer's
max |input| per channel as an ``nnx.Intermediate`` that ``nnx.capture`` collects: no global state, no
callbacks. Quantization (``quantize_module``) is graph surgery: ``nnx.recursive_map`` rebuilds the graph with
an ``Int8Linear`` in place of each ``nnx.Linear``, and the params follow.

What stays float32, and why: token/position embeddings (a table lookup, no product to speed up),
LayerNorm/RMSNorm (statistics over a row), attention scores and softmax (products of two activations,
whose ranges change per text and per head: quantizing them costs accuracy for a small share of the
work), activation functions, pooling, and the heads after the encoder (``Dense``, classifiers: small
products whose error would reach the output directly).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxst import native

# Calibration input: the channels whose activations run large are the model's, not the text's; these
# sentences of different lengths, with digits, names, symbols, questions and a few other languages, find
# them (and the occasional token that drives one of them further).
CALIBRATION_TEXTS = [
    "A man is playing a guitar on the street.",
    "The quick brown fox jumps over the lazy dog.",
    "How do I reset my password?",
    "Stock prices fell sharply after the central bank raised interest rates by half a point on Tuesday.",
    "Ein Hund läuft über die Wiese.",
    "Photosynthesis converts light energy into chemical energy that plants store as sugar.",
    "No, it is not.",
    "Two children are sitting on a bench and eating ice cream while their parents talk nearby.",
    "What is the capital of Australia?",
    "The committee will publish its final report, with recommendations for the next budget, in March.",
    "She smiled.",
    "Researchers trained the model on a large corpus of web pages, books and scientific articles.",
    "Local police arrest 3 suspects after the robbery",
    "Obama signs the $1.2 trillion spending bill, 3 days before the deadline (report)",
    "Let me put it this way: it depends on the weather.",
    "U.S. shares close 2% higher; NASDAQ up 35 points to 4,100",
    "That was a good movie...",
    "Q: Why? A: Because 7 x 8 = 56!",
    "Le chat dort sur le canapé depuis ce matin.",
    "RT @user: New results, 10/10 would read again #science",
]


class ObservedLinear(nnx.Module):
    """Stands in for an ``nnx.Linear`` during calibration: computes it, and sows the largest |input| per
    channel (``absmax``, an ``nnx.Intermediate``; one entry per call)."""

    def __init__(self, linear: nnx.Linear):
        self.linear = linear

    def __call__(self, x):
        self.sow(nnx.Intermediate, "absmax", jnp.max(jnp.abs(x.reshape(-1, x.shape[-1]).astype(jnp.float32)), axis=0))
        return self.linear(x)


def _dense_layers(module: nnx.Module, fn) -> nnx.Module:
    """A copy of ``module`` with every ``nnx.Linear`` node replaced by ``fn(path, linear)``."""
    return nnx.recursive_map(lambda path, node: fn(tuple(path), node) if isinstance(node, nnx.Linear) else node,
                             module)


def _key(path) -> str:
    return ".".join(map(str, path))


@functools.partial(jax.jit, static_argnums=0)
def _observe(graphdef: nnx.GraphDef, state, batch: dict):
    """One forward ``model(batch)`` of the observed model: (its output, the ``absmax`` values sown). The output
    is returned too so that the whole forward is computed as inference computes it (without a consumer, XLA
    would drop the last layer's products and fuse their inputs into the max instead)."""
    return nnx.capture(nnx.merge(graphdef, state), nnx.Intermediate)(batch)


def calibrate(module: nnx.Module, params: dict, batch: dict, part: str = "encoder") -> dict[str, np.ndarray]:
    """max |input| per channel of every ``nnx.Linear`` under ``module.<part>``, over one forward
    ``module(batch)`` with ``params`` (the module's nested params; ``module`` may be abstract, from
    ``nnx.eval_shape``, and is not changed), keyed by the layer's path under ``part``."""
    model = nnx.merge(nnx.split(module, nnx.Param)[0], params)
    setattr(model, part, _dense_layers(getattr(model, part), lambda path, linear: ObservedLinear(linear)))
    _, sown = jax.block_until_ready(_observe(*nnx.split(model), batch))
    stats = {}
    for path, variable in nnx.to_flat_state(sown):  # (part, ..., layer, "absmax")
        calls = [np.asarray(v) for v in variable.get_value()]
        stats[_key(path[1:-1])] = functools.reduce(np.maximum, calls)
    return stats


def quantize_weights(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, N) float kernel -> (K, N) int8 and the (N,) float32 per-column scales (symmetric, 127 levels)."""
    kernel = np.asarray(kernel, np.float32)
    amax = np.abs(kernel).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(kernel / scale), -127, 127).astype(np.int8), scale


def quantize_rows(x):
    """(M, K) float -> (M, K) int8 q in [-128, 127] and (M, 1) float32 ``scale`` and ``offset`` with
    x ~ scale * q + offset: each row's own [min, max] in 256 steps (asymmetric, so the one-sided inputs
    after an activation function get the full range)."""
    x = x.astype(jnp.float32)
    low = jnp.minimum(jnp.min(x, axis=-1, keepdims=True), 0.0)
    high = jnp.maximum(jnp.max(x, axis=-1, keepdims=True), 0.0)
    scale = jnp.where(high > low, (high - low) / 255.0, 1.0)
    q = jnp.clip(jnp.round((x - low) / scale) - 128.0, -128, 127).astype(jnp.int8)
    return q, scale, low + 128.0 * scale


def dequantize(acc, x_scale, x_offset, correction, w_scale, n: int):
    """float32 (M, N) from the int32 product of ``quantize_rows``'s q and the int8 kernel:
    (x_scale * acc + x_offset * column sums of the kernel) * w_scale."""
    column_sums = (correction[:n] // 128).astype(jnp.float32)  # correction = 128 x the kernel's column sums
    return (acc.astype(jnp.float32) * x_scale + x_offset * column_sums) * w_scale


def int8_product(xq, packed, correction, k: int, n: int):
    """The exact int32 (M, N) product of int8 rows and packed int8 weights: native VNNI or XLA's dot."""

    def with_xla(xq, packed, correction):
        w = native.unpack_int8_weights(packed, k, n)
        return jax.lax.dot(xq, w, preferred_element_type=jnp.int32)

    target = _native_target()
    if target is None:
        return with_xla(xq, packed, correction)

    def with_vnni(xq, packed, correction):
        return native.int8_matmul(xq, packed, correction, n, target=target)

    return jax.lax.platform_dependent(xq, packed, correction, cpu=with_vnni, default=with_xla)


def _native_target() -> str | None:
    return native.int8_matmul_kernel() if native.single_cpu() else None


class Int8Linear(nnx.Module):
    """``nnx.Linear``'s function with int8 weights: ``packed`` (the VNNI panels of the (K, N) int8 kernel),
    ``correction`` (the kernel's 128 x column sums, which the unsigned-times-signed product takes off),
    ``scale`` (N,) and ``bias`` (N,) in float32, ``smooth`` (K,): 1 / s_j, the input channels' smoothing.
    Output float32, or the input's float dtype."""

    def __init__(self, in_features: int, out_features: int, use_bias: bool = True):
        panels, groups = native.int8_panels(in_features, out_features)
        self.in_features, self.out_features = in_features, out_features
        self.packed = nnx.Param(jnp.zeros((panels, groups, native.INT8_PANEL * 4), jnp.int8))
        self.correction = nnx.Param(jnp.zeros((panels * native.INT8_PANEL,), jnp.int32))
        self.scale = nnx.Param(jnp.ones((out_features,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32)) if use_bias else None
        self.smooth = nnx.Param(jnp.ones((in_features,), jnp.float32))  # 1 / s_j per input channel

    def __call__(self, x):
        lead = x.shape[:-1]
        xq, x_scale, x_offset = quantize_rows(x.reshape(-1, self.in_features).astype(jnp.float32) * self.smooth[...])
        acc = int8_product(xq, self.packed[...], self.correction[...], self.in_features, self.out_features)
        y = dequantize(acc, x_scale, x_offset, self.correction[...], self.scale[...], self.out_features)
        if self.bias is not None:
            y = y + self.bias[...]
        return y.reshape(*lead, self.out_features).astype(jnp.promote_types(x.dtype, jnp.float32))


def int8_params(kernel: np.ndarray, bias: np.ndarray | None, input_absmax: np.ndarray | None = None) -> dict:
    """The params of an ``Int8Linear`` from a float (K, N) kernel, (N,) bias and the (K,) max |input| per
    channel from calibration (None: no smoothing)."""
    kernel = np.asarray(kernel, np.float32)
    smooth = np.ones(kernel.shape[0], np.float32)
    if input_absmax is not None:
        # A channel that stayed quiet in calibration is smoothed as the layer's average channel, not amplified:
        # calibration cannot promise it stays quiet, and one of its values 20x past the calibrated max, amplified
        # by 1/s_j, would set the whole token's quantization range (all-mpnet-base-v2's FFN inputs do that).
        absmax = np.asarray(input_absmax, np.float32)
        absmax = np.maximum(absmax, absmax.mean())
        w = np.maximum(np.abs(kernel).max(axis=1), 1e-5)
        smooth = np.sqrt(np.maximum(absmax, 1e-5) / w).astype(np.float32)
    q, scale = quantize_weights(kernel * smooth[:, None])
    packed, correction = native.pack_int8_weights(q)
    params = {"packed": packed, "correction": correction, "scale": scale, "smooth": (1.0 / smooth).astype(np.float32)}
    if bias is not None:
        params["bias"] = np.asarray(bias, np.float32)
    return params


def quantize_module(module: nnx.Module, params: dict, stats: dict[str, np.ndarray] | None = None
                    ) -> tuple[nnx.Module, dict]:
    """``module`` rebuilt with an ``Int8Linear`` in place of every ``nnx.Linear`` (graph surgery: ``module``
    itself is not changed), and ``params`` with each such layer's ``kernel``/``bias`` turned into its int8
    params (numpy). ``params`` is the module's nested params dict (numpy or device arrays); it is not
    changed. ``stats``: ``calibrate``'s max |input| per channel, by layer path (smoothing; a layer missing
    from it is not smoothed)."""

    def copy(tree):
        return {k: copy(v) if isinstance(v, dict) else v for k, v in tree.items()}

    params = copy(params)

    def replace(path, linear):
        node = params
        for step in path[:-1]:
            node = node[step]
        leaf = node.get(path[-1])
        if not isinstance(leaf, dict) or "kernel" not in leaf:
            raise ValueError(f"no kernel for the dense layer {_key(path)} in the params")
        kernel = np.asarray(leaf["kernel"], np.float32)
        bias = None if linear.bias is None else np.asarray(leaf["bias"], np.float32)
        node[path[-1]] = int8_params(kernel, bias, (stats or {}).get(_key(path)))
        return Int8Linear(kernel.shape[0], kernel.shape[1], use_bias=bias is not None)

    return _dense_layers(module, replace), params


__all__ = ["CALIBRATION_TEXTS", "Int8Linear", "ObservedLinear", "calibrate", "int8_params", "quantize_module",
           "quantize_rows", "quantize_weights"]
