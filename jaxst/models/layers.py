"""The building blocks every architecture shares: activations (BERT's exact gelu and the rest by
``config.json`` name), dropout, RMSNorm, rotary position embeddings, attention masks (padding, causal,
sliding window), one attention function (grouped-query heads, a bias, the native CPU kernel), BERT-style
multi-head attention over three projections, q/k-norm attention, the BERT feed-forward blocks and the
gated MLP. The files of ``jaxst.models`` wire them into architectures; nothing here knows one.

Numerics follow transformers' eager implementations: RMSNorm statistics in float32, RoPE angles and
tables in float32 ("rotate half" layout: the two halves of each head are the pairs), attention scores
and softmax in float32 whatever the compute dtype.

Dense layers are ``nnx.Linear`` modules and are only ever called, never read: whatever stands in their
place in the graph (``jaxst.models.int8``'s int8 layer, its calibration observer) computes them.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxst import native


def _gelu_erfc(x):
    return jax.nn.gelu(x, approximate=False)


@jax.custom_vjp
def gelu(x):
    """BERT's "gelu", the exact ``x * Phi(x)`` (torch's erf form), not the tanh approximation.

    Evaluated as ``x / 2 * (1 + erf(x / sqrt 2))``: XLA's float32 erf is ~2.5x faster on CPU than the
    erfc that ``jax.nn.gelu`` uses (0.37 vs 0.90 ms on (1024, 1536), ~3% of a 12-layer BERT forward),
    with the same distance from torch's result (max 1.4e-6 vs 1.2e-6 over [-10, 10]; torch's own error
    is 1.2e-6). Under differentiation the forward and its gradient are ``jax.nn.gelu``'s, as before:
    training stays bit for bit what it was (a top-k loss over several steps amplifies any change)."""
    h = x * jnp.asarray(1 / math.sqrt(2), x.dtype)
    return x * jnp.asarray(0.5, x.dtype) * (1 + jax.lax.erf(h))


def _gelu_forward(x):
    return _gelu_erfc(x), x


def _gelu_backward(x, grad):
    return jax.vjp(_gelu_erfc, x)[1](grad)


gelu.defvjp(_gelu_forward, _gelu_backward)

# config.json's hidden_act / activation / hidden_activation names -> the function
ACTIVATIONS = {
    "gelu": gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


def activation(name: str):
    """The activation function ``config.json`` names; a ValueError listing the supported ones otherwise."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported hidden_act {name!r}; supported: {sorted(ACTIVATIONS)}") from None


def dropout(x, rate: float, rng):
    """Inverted dropout as torch applies it in training: zero each entry with probability ``rate``, scale
    the rest by 1 / (1 - rate). The identity when ``rng`` is None (inference) or ``rate`` is 0."""
    if rng is None or rate == 0.0:
        return x
    if rate >= 1.0:  # everything dropped (torch returns zeros too); avoids 0 * inf in the gradient
        return jnp.zeros_like(x)
    # The mask comes from XLA's own counter-based generator seeded by four words drawn from ``rng``:
    # about 5x faster on CPU than jax.random.bernoulli's threefry, and as deterministic per key.
    state = jax.random.bits(rng, (4,), jnp.uint32)
    _, bits = jax.lax.rng_bit_generator(state, x.shape, jnp.uint32, algorithm=jax.lax.RandomAlgorithm.RNG_THREE_FRY)
    keep = bits < jnp.uint32(min(round((1.0 - rate) * 2.0**32), 2**32 - 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def layer_states(states: list, final, all_layers: bool):
    """An encoder's output: ``final`` (B, T, H), or with ``all_layers`` every layer's as transformers'
    ``output_hidden_states`` gives them: the input of the first layer, each layer's output, and ``final`` (the
    last layer's output after any final norm) in place of the last (``states``: the first two, in order)."""
    return (*states[:-1], final) if all_layers else final


_REMAT = contextvars.ContextVar("jaxst_rematerialize_layers", default=False)


@contextlib.contextmanager
def rematerialized(on: bool = True):
    """Within this context, a forward being traced runs each encoder layer under ``nnx.remat`` (activation
    checkpointing): the backward pass recomputes a layer's intermediates from its input instead of keeping
    them, so training memory holds one layer's activations plus every layer's input."""
    token = _REMAT.set(on)
    try:
        yield
    finally:
        _REMAT.reset(token)


def run_layer(layer, *args):
    """``layer(*args)``: every architecture's encoder loop calls its layers through this, so that
    ``rematerialized()`` applies to all of them from one place."""
    if not _REMAT.get():
        return layer(*args)
    return nnx.remat(lambda module, *a: module(*a))(layer, *args)


def split_rng(rng, n: int) -> tuple:
    """``n`` independent keys from ``rng``, or ``n`` Nones when there is no key (no dropout)."""
    return (None,) * n if rng is None else tuple(jax.random.split(rng, n))


class RMSNorm(nnx.Module):
    """``weight * x / sqrt(mean(x^2) + eps)`` over the last axis, as Qwen3's (and Llama's) RMSNorm: the
    statistics in float32, the result cast back to the input dtype before the gain.

    ``zero_centered``: Gemma's variant, gain ``1 + weight`` (weights stored around 0), applied in float32
    before the cast back."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs, zero_centered: bool = False):
        self.scale = nnx.Param(jnp.full((dim,), 0.0 if zero_centered else 1.0, jnp.float32))  # <-> torch "weight"
        self.eps = eps
        self.zero_centered = zero_centered

    def __call__(self, x):
        h = x.astype(jnp.float32)
        h = h * jax.lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + self.eps)
        if self.zero_centered:
            return (h * (1.0 + self.scale[...].astype(jnp.float32))).astype(x.dtype)
        return self.scale[...] * h.astype(x.dtype)


def rope_tables(positions, head_dim: int, theta: float, factor: float = 1.0):
    """(cos, sin), each (B, T, head_dim) float32, for integer ``positions`` (B, T): angle ``p * theta^(-2i/d)``,
    the frequencies repeated for both halves of a head. ``factor``: transformers' "linear" RoPE scaling, the
    frequencies divided by it."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # (D/2,)
    inv_freq = inv_freq / factor
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, T, D/2)
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x, cos, sin):
    """Rotate (B, N, T, D) queries or keys by the (B, T, D) tables: ``x * cos + rotate_half(x) * sin``."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, None].astype(x.dtype), sin[:, None].astype(x.dtype)
    return x * cos + rotated * sin


def positions_from_mask(mask):
    """Each real token's index within its text (0, 1, ...), for left- or right-padded (B, T) masks."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=1) - 1, 0)


def attention_mask(mask, *, causal: bool, window: int | None = None):
    """(B, 1, T, T) booleans: which key each query may see. ``mask`` is the (B, T) padding mask, or a
    (B, T, T) per-query mask (packed batches: each token sees only its own text). ``causal``: keys at or
    before the query; ``window``: keys fewer than ``window`` positions back (sliding-window layers)."""
    t = mask.shape[-1]
    allowed = mask.astype(bool)[:, None, :] if mask.ndim == 2 else mask.astype(bool)  # (B, 1 or T, T)
    q = jnp.arange(t)[:, None]
    k = jnp.arange(t)[None, :]
    if causal:
        allowed = allowed & (k <= q)
    if window is not None:
        allowed = allowed & (q - k < window) & (k - q < window)
    return allowed[:, None]


# Longer inputs attend a block of queries at a time: the (heads, queries, keys) float32 scores of an
# 8,192-token text would take 3.2 GB per 12 heads at once, a 1,024-query block an eighth of that.
QUERY_BLOCK = 1024


def attention(q, k, v, mask, *, scale: float, causal: bool = False, window: int | None = None, bias=None,
              dropout_rate: float = 0.0, dropout_rng=None, heads_last: bool = False):
    """softmax(q k^T * scale + bias) v over the keys each query may see, every family's self-attention.

    q (B, N, T, D); k, v (B, KV, S, D), ``N`` query heads sharing ``KV`` key/value heads; ``mask`` the (B, S)
    padding mask or (B, T, S) per-query masks (packed batches); ``causal``: keys at or before the query;
    ``window``: keys fewer than ``window`` positions away; ``bias`` (1 or B, 1 or N, T, S) added to the
    scaled scores (MPNet's relative positions). Returns (B, N, T, D) in v's dtype. ``heads_last``: q, k, v
    and the result are (B, T, N, D) / (B, S, KV, D), as the projections lay them out (the native kernel
    reads them in place; XLA's ops transpose).

    Float32 inference on a single CPU device runs the fused native kernel (``jaxst.native``: about 3x
    XLA's ops at 200 tokens, and local layers visit only their window); everything else (accelerators,
    several CPU devices, bfloat16, dropout) runs ``xla_attention``, the same function in XLA's ops.
    Gradients always come from ``xla_attention``."""
    keys = mask.astype(bool)[:, None, :] if mask.ndim == 2 else mask.astype(bool)  # (B, 1 or T, S)
    window = window or None
    if dropout_rng is None and _native_ok(q, k, v, bias):
        return _fused_attention(q, k, v, keys, bias, float(scale), bool(causal), window, bool(heads_last))
    return _xla_attention_in(heads_last, q, k, v, keys, scale, causal, window, bias, dropout_rate, dropout_rng)


def _xla_attention_in(heads_last: bool, q, k, v, *args):
    """``xla_attention`` on q, k, v (and a result) in either layout."""
    if not heads_last:
        return xla_attention(q, k, v, *args)
    q, k, v = (x.transpose(0, 2, 1, 3) for x in (q, k, v))
    return xla_attention(q, k, v, *args).transpose(0, 2, 1, 3)


def _native_ok(q, k, v, bias) -> bool:
    floats = [x for x in (q, k, v, bias) if x is not None]
    # On a machine whose default backend is an accelerator the kernel is not even built; where a CPU
    # computation still lands there, platform_dependent below keeps the accelerators on XLA's ops.
    return all(x.dtype == jnp.float32 for x in floats) and native.single_cpu() and native.attention_kernel() is not None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _fused_attention(q, k, v, keys, bias, scale, causal, window, heads_last):
    def on_cpu(q, k, v, keys, bias):
        return native.attention(q, k, v, keys, bias, scale=scale, causal=causal, window=window,
                                heads_last=heads_last)

    def elsewhere(q, k, v, keys, bias):
        return _xla_attention_in(heads_last, q, k, v, keys, scale, causal, window, bias)

    return jax.lax.platform_dependent(q, k, v, keys, bias, cpu=on_cpu, default=elsewhere)


def _fused_forward(q, k, v, keys, bias, scale, causal, window, heads_last):
    return _fused_attention(q, k, v, keys, bias, scale, causal, window, heads_last), (q, k, v, keys, bias)


def _fused_backward(scale, causal, window, heads_last, residuals, grad):
    q, k, v, keys, bias = residuals
    _, pullback = jax.vjp(
        lambda q, k, v, bias: _xla_attention_in(heads_last, q, k, v, keys, scale, causal, window, bias), q, k, v, bias)
    dq, dk, dv, dbias = pullback(grad)
    return dq, dk, dv, None, dbias


_fused_attention.defvjp(_fused_forward, _fused_backward)


def xla_attention(q, k, v, keys, scale: float, causal: bool = False, window: int | None = None, bias=None,
                  dropout_rate: float = 0.0, dropout_rng=None):
    """``attention`` in XLA's ops, ``keys`` the (B, 1 or T, S) key masks."""
    t, s = q.shape[2], k.shape[2]
    allowed = keys[:, None]  # (B, 1, 1 or T, S)
    if causal or window:
        if t != s:
            raise ValueError(f"causal or windowed attention needs as many queries as keys, got {t} and {s}")
        allowed = attention_mask(keys if keys.shape[1] > 1 else keys[:, 0], causal=causal, window=window)
    return grouped_query_attention(q, k, v, allowed, scale, dropout_rate, dropout_rng, bias=bias)


def grouped_query_attention(q, k, v, mask, scale: float, dropout_rate: float = 0.0, dropout_rng=None, bias=None):
    """softmax(q k^T * scale + bias) v with ``N`` query heads sharing ``KV`` key/value heads (N a multiple of KV).

    q (B, N, T, D), k and v (B, KV, S, D), mask (B, 1, T or 1, S) booleans, bias None or (1 or B, 1 or N, T, S)
    -> (B, N, T, D). Scores and softmax in float32; dropout on the probabilities in training (a
    ``dropout_rng``). Past 2 x QUERY_BLOCK tokens (at inference, without bias) the queries go through in
    blocks: each query row's softmax is its own, so the result is the same, in a fraction of the memory."""
    t = q.shape[2]
    if t <= 2 * QUERY_BLOCK or dropout_rng is not None or bias is not None:
        return _attend(q, k, v, mask, scale, dropout_rate, dropout_rng, bias)
    b, n, _, d = q.shape
    s = k.shape[2]
    blocks = -(-t // QUERY_BLOCK)
    pad = blocks * QUERY_BLOCK - t
    q_blocks = jnp.pad(q, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, n, blocks, QUERY_BLOCK, d)
    if mask.shape[2] == 1:  # one key mask for every query
        out = jax.lax.map(lambda qb: _attend(qb, k, v, mask, scale), q_blocks.transpose(2, 0, 1, 3, 4))
    else:
        m = jnp.pad(mask, ((0, 0), (0, 0), (0, pad), (0, 0))).reshape(b, mask.shape[1], blocks, QUERY_BLOCK, s)
        out = jax.lax.map(lambda xs: _attend(xs[0], k, v, xs[1], scale),
                          (q_blocks.transpose(2, 0, 1, 3, 4), m.transpose(2, 0, 1, 3, 4)))
    return out.transpose(1, 2, 0, 3, 4).reshape(b, n, blocks * QUERY_BLOCK, d)[:, :, :t]


def _attend(q, k, v, mask, scale: float, dropout_rate: float = 0.0, dropout_rng=None, bias=None):
    b, n, t, d = q.shape
    kv, s = k.shape[1], k.shape[2]
    g = n // kv  # query head h reads key/value head h // g, as transformers' repeat_kv lays them out
    # The group's queries stacked as rows of one (G * T, D) matrix per key/value head: both products are
    # plain batched matmuls, which XLA's CPU backend runs faster than the equivalent 5-D einsums.
    scores = jnp.matmul(q.reshape(b, kv, g * t, d), k.swapaxes(-1, -2), preferred_element_type=jnp.float32)
    scores = scores.reshape(b, kv, g, t, s) * scale
    if bias is not None:  # (1 or B, 1 or N, T, S) -> (1 or B, 1 or KV, 1 or G, T, S)
        bias = bias[:, :, None] if bias.shape[1] == 1 else bias.reshape(bias.shape[0], kv, g, *bias.shape[2:])
        scores = scores + bias.astype(jnp.float32)
    scores = jnp.where(mask[:, :, None], scores, jnp.finfo(jnp.float32).min)
    probs = dropout(jax.nn.softmax(scores, axis=-1), dropout_rate, dropout_rng).astype(v.dtype)
    return jnp.matmul(probs.reshape(b, kv, g * t, s), v).reshape(b, n, t, d)


def multi_head_attention(x, query, key, value, num_heads: int, mask, dropout_rate: float = 0.0, dropout_rng=None,
                         *, position_bias=None, first_only: bool = False):
    """Scaled dot-product self-attention as BERT, DistilBERT and MPNet compute it: (B, T, H) -> (B, Tq, H).

    ``query``/``key``/``value`` are the three dense projections (``nnx.Linear``, or what stands in for them),
    three matmuls (one fused (H, 3H) matmul concatenated the kernels on every call: ~5% of a BERT forward on
    CPU); their (B, T, N, D) heads go to ``attention`` as they are (``heads_last``): the native kernel reads
    them in place, XLA's ops transpose to (B, N, T, D) for plain batched matmuls (about 1.5x faster there
    than (B, T, N, D) einsums). ``mask`` (B, T) marks the real keys, or (B, T, T) says which key each query
    may see (packed batches: only its own text's); ``position_bias`` (1 or B, N, T, T) is added to the scaled
    scores (MPNet). A (B, S) ``mask`` with S < T says only the first S tokens are keys (ColBERT's
    [MASK]-expanded queries: the expansion tokens attend but are not attended): their key and value
    projections are not computed at all. With ``first_only`` only position 0 queries (Tq = 1): what a
    classification head reads. Scores and softmax are float32 whatever the compute dtype (bf16/fp16 after
    ``model.half()``)."""
    b, t, h = x.shape
    d = h // num_heads
    s = mask.shape[-1]  # keys: the first s tokens (s < t when the tokens after them are attended by none)
    if s > t or (s < t and mask.ndim != 2):
        raise ValueError(f"attention mask {mask.shape} does not fit {t} tokens: (B, S <= T) or (B, T, T)")
    q = query(x).reshape(b, t, num_heads, d)
    keys = x[:, :s]  # no key or value rows for tokens no query sees
    k, v = (p(keys).reshape(b, s, num_heads, d) for p in (key, value))
    if s < t and position_bias is not None:
        position_bias = position_bias[..., :s]
    if first_only:  # (B, T, N, D) each
        q = q[:, :1]
        mask = mask[:, :1] if mask.ndim == 3 else mask
        position_bias = None if position_bias is None else position_bias[:, :, :1]
    out = attention(q, k, v, mask, scale=1 / math.sqrt(d), bias=position_bias, dropout_rate=dropout_rate,
                    dropout_rng=dropout_rng, heads_last=True)
    return out.reshape(b, -1, h)


class QKNormAttention(nnx.Module):
    """Self-attention with per-head q/k RMSNorm before RoPE and grouped-query heads, as Qwen3 and Gemma 3
    have it: ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` and ``q_norm`` / ``k_norm`` (transformers' names).

    ``scale``: the score scale (Qwen3 head_dim^-0.5, Gemma query_pre_attn_scalar^-0.5); ``causal`` and
    ``window`` as ``attention_mask`` takes them; ``zero_centered``: Gemma's (1 + weight) norms."""

    def __init__(self, hidden: int, heads: int, kv_heads: int, head_dim: int, *, bias: bool, eps: float,
                 scale: float, causal: bool, window: int | None, dropout_rate: float = 0.0,
                 zero_centered: bool = False, rngs: nnx.Rngs):
        self.q_proj = nnx.Linear(hidden, heads * head_dim, use_bias=bias, rngs=rngs)
        self.k_proj = nnx.Linear(hidden, kv_heads * head_dim, use_bias=bias, rngs=rngs)
        self.v_proj = nnx.Linear(hidden, kv_heads * head_dim, use_bias=bias, rngs=rngs)
        self.o_proj = nnx.Linear(heads * head_dim, hidden, use_bias=bias, rngs=rngs)
        self.q_norm = RMSNorm(head_dim, eps, rngs=rngs, zero_centered=zero_centered)
        self.k_norm = RMSNorm(head_dim, eps, rngs=rngs, zero_centered=zero_centered)
        self.shape = (heads, kv_heads, head_dim)
        self.scale, self.causal, self.window, self.dropout_rate = scale, causal, window, dropout_rate

    def __call__(self, x, padding_mask, cos, sin, dropout_rng=None):
        heads, kv_heads, d = self.shape
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).reshape(b, t, heads, d)).transpose(0, 2, 1, 3)  # (B, N, T, D)
        k = self.k_norm(self.k_proj(x).reshape(b, t, kv_heads, d)).transpose(0, 2, 1, 3)  # (B, KV, T, D)
        v = self.v_proj(x).reshape(b, t, kv_heads, d).transpose(0, 2, 1, 3)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        out = attention(q, k, v, padding_mask, scale=self.scale, causal=self.causal, window=self.window,
                        dropout_rate=self.dropout_rate, dropout_rng=dropout_rng)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(b, t, -1))


class DenseActivation(nnx.Module):
    """``act(dense(x))``: the first half of BERT's feed-forward (``intermediate``; MPNet's too), the
    activation by ``config.json`` name."""

    def __init__(self, d_in: int, d_out: int, act: str, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(d_in, d_out, rngs=rngs)
        self.act = act

    def __call__(self, x):
        return activation(self.act)(self.dense(x))


class DenseResidualNorm(nnx.Module):
    """``LayerNorm(dropout(dense(x)) + residual)``, BERT's post-norm sublayer output (``attention.output``
    and ``output``; MPNet's feed-forward output). Dropout only with a ``dropout_rng`` (training)."""

    def __init__(self, d_in: int, d_out: int, eps: float, dropout_rate: float, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(d_in, d_out, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(d_out, epsilon=eps, rngs=rngs)
        self.dropout_rate = dropout_rate

    def __call__(self, x, residual, dropout_rng=None):
        return self.LayerNorm(dropout(self.dense(x), self.dropout_rate, dropout_rng) + residual)


class GatedMLP(nnx.Module):
    """``down(act(gate(x)) * up(x))`` with the Llama-family names (``gate_proj``, ``up_proj``, ``down_proj``):
    SwiGLU with silu, GeGLU with tanh-approximated gelu (Gemma)."""

    def __init__(self, dim: int, hidden: int, activation, *, rngs: nnx.Rngs):
        self.gate_proj = nnx.Linear(dim, hidden, use_bias=False, rngs=rngs)
        self.up_proj = nnx.Linear(dim, hidden, use_bias=False, rngs=rngs)
        self.down_proj = nnx.Linear(hidden, dim, use_bias=False, rngs=rngs)
        self.activation = activation

    def __call__(self, x):
        return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))


__all__ = [
    "ACTIVATIONS",
    "DenseActivation",
    "DenseResidualNorm",
    "GatedMLP",
    "QKNormAttention",
    "RMSNorm",
    "activation",
    "apply_rope",
    "attention",
    "attention_mask",
    "dropout",
    "gelu",
    "grouped_query_attention",
    "multi_head_attention",
    "positions_from_mask",
    "rope_tables",
    "split_rng",
    "xla_attention",
]
