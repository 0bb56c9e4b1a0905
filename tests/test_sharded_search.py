"""Sharded search: a corpus split by rows over 8 (forced) CPU devices gives the one-device results.

The devices are forced in a fresh process (``--xla_force_host_platform_device_count=8``): a backend's
device count is fixed once JAX starts, and this test process already runs with one CPU device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import json
    import numpy as np
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jaxst import util
    from jaxst.index import EmbeddingIndex

    assert len(jax.devices()) == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    rng = np.random.default_rng(7)
    corpus = rng.standard_normal((12_000, 48)).astype(np.float32)
    queries = corpus[:25] + 0.5 * rng.standard_normal((25, 48)).astype(np.float32)
    out = {"util": {}, "index": {}}
    one = jax.device_put(corpus, jax.devices()[0])
    sharded = jax.device_put(corpus, NamedSharding(mesh, P("data")))
    assert len(sharded.sharding.device_set) == 8
    for score in ("cos_sim", "dot_score"):
        fn = getattr(util, score)
        out["util"][score] = [util.semantic_search(queries, c, top_k=10, corpus_chunk_size=700, score_function=fn)
                              for c in (one, sharded)]
    ranges = np.stack([corpus.min(0), corpus.max(0)])
    for precision in ("float32", "bfloat16", "int8", "uint8", "binary", "ubinary"):
        pair = []
        for m in (None, mesh):
            index = EmbeddingIndex(48, precision=precision, chunk_size=1000, mesh=m,
                                   ranges=ranges if "int8" in precision else None)
            index.add(corpus[:5_001])  # the device copy is padded to whole rows per device
            index.search(queries[:2], top_k=3)
            index.add(corpus[5_001:])  # grows after a search: the sharded copy is rebuilt
            pair.append([index.search(queries, top_k=10, rescore_multiplier=r) for r in (None, 3)])
            if m is not None:
                assert len(index._corpus_on_device().sharding.device_set) == 8
        out["index"][precision] = pair
    print("RESULT" + json.dumps(out))
''')


def test_sharded_search_equals_one_device(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])

    def ids(hits):
        return [[h["corpus_id"] for h in row] for row in hits]

    def scores(hits):
        return [[h["score"] for h in row] for row in hits]

    for score, (one, sharded) in result["util"].items():
        assert ids(sharded) == ids(one), score
        assert max(abs(a - b) for ra, rb in zip(scores(one), scores(sharded)) for a, b in zip(ra, rb)) < 1e-5
    for precision, (one, sharded) in result["index"].items():
        for a, b in zip(one, sharded):
            assert len(a) == 25 and all(len(row) == 10 for row in a)
            assert ids(b) == ids(a), precision
            assert max(abs(x - y) for ra, rb in zip(scores(a), scores(b)) for x, y in zip(ra, rb)) < 1e-5
