"""Several hosts: two processes on localhost under ``jax.distributed.initialize`` with CPU collectives (gloo).

Each process encodes its half of a corpus on its own (two forced CPU) devices, the halves are gathered
into one corpus matrix on every process (``jaxst.parallel.encode_distributed``), and a semantic search
over it must give what one process doing all the work gives, computed here in the test process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import read_stsb, unique_sentences

WORKER = """
    import json, sys
    import jax

    port, process_id, folder, data_path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id,
                               initialization_timeout=120)

    import numpy as np
    from jaxst import SentenceTransformer, util
    from jaxst.parallel import encode_distributed, process_shard

    data = json.load(open(data_path))
    model = SentenceTransformer(folder)
    corpus_emb = encode_distributed(model, data["corpus"], batch_size=16)  # this process's half, then gathered
    hits = util.semantic_search(model.encode(data["queries"]), corpus_emb, top_k=5)
    np.save(f"{data_path}.{process_id}.npy", corpus_emb)
    print(json.dumps({"process_index": jax.process_index(), "process_count": jax.process_count(),
                      "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
                      "my_share": len(process_shard(data["corpus"])), "hits": hits}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def folder(make_tiny_st):
    return make_tiny_st(normalize=True)


def test_two_processes_encode_halves_and_search_one_global_corpus(folder, tmp_path):
    from jaxst import SentenceTransformer, util

    rows = read_stsb("stsb-en-test.csv")
    corpus = unique_sentences(rows)[:301]  # odd: the halves differ in size
    queries = [a for a, _, _ in rows[500:520]]
    data = tmp_path / "data.json"
    data.write_text(json.dumps({"corpus": corpus, "queries": queries}))

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "JAXST_COMPILATION_CACHE": "0",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()}
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WORKER), str(port), str(i), str(folder),
                               str(data)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(2)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=420)
            assert p.returncode == 0, err[-4000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()

    model = SentenceTransformer(str(folder))
    expected_emb = model.encode(corpus, batch_size=16)  # one process doing it all
    expected_hits = util.semantic_search(model.encode(queries), expected_emb, top_k=5)
    assert [o["process_index"] for o in outs] == [0, 1]
    assert all(o["process_count"] == 2 and o["global_devices"] == 4 and o["local_devices"] == 2 for o in outs)
    assert [o["my_share"] for o in outs] == [150, 151]
    for i, o in enumerate(outs):
        gathered = np.load(f"{data}.{i}.npy")
        assert gathered.shape == expected_emb.shape
        np.testing.assert_allclose(gathered, expected_emb, atol=1e-6, rtol=0)  # every process has all, in order
        for got, want in zip(o["hits"], expected_hits, strict=True):
            assert [h["corpus_id"] for h in got] == [h["corpus_id"] for h in want]
            np.testing.assert_allclose([h["score"] for h in got], [h["score"] for h in want], atol=1e-5, rtol=0)


def test_process_shard_covers_everything_once():
    from jaxst.parallel import process_shard

    items = list(range(11))
    for n in (1, 2, 3, 4, 11, 12):
        shares = [process_shard(items, i, n) for i in range(n)]
        assert sum(shares, []) == items
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_gather_rows_in_one_process_is_the_identity():
    from jaxst.parallel import gather_rows

    x = np.arange(12.0).reshape(4, 3)
    np.testing.assert_array_equal(gather_rows(x), x)
