"""Multi-device encode: each batch split by rows over a data-parallel mesh, params replicated.

Eight CPU devices are forced in a subprocess (``--xla_force_host_platform_device_count=8``): the mesh
results must equal the single-device results and sentence-transformers' (computed here, in the test
process), in input order, through the default path, ``device=[...]`` and the multi-process pool API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import TEXTS

SHARDED_TOL = 1e-6  # per-device batches are smaller matmuls: the same math, other rounding at worst


def texts() -> list[str]:
    return TEXTS + [f"sentence {i} " + "with more words " * (i % 9) for i in range(37)]  # 47: not a multiple of 8


@pytest.fixture(scope="module")
def folder(make_tiny_st):
    return make_tiny_st(pooling_mode=("mean", "max"), normalize=True)


@pytest.fixture(scope="module")
def oracle(folder, tmp_path_factory):
    from sentence_transformers import SentenceTransformer as ST

    path = tmp_path_factory.mktemp("oracle") / "oracle.npy"
    np.save(path, ST(str(folder), device="cpu").encode(texts()))
    return path


SCRIPT = """
    import json, sys
    import jax
    import numpy as np
    import jaxst.sentence_transformer as st_module
    from jaxst import SentenceTransformer

    folder, oracle_path, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    report = {"local_devices": jax.local_device_count()}
    devices_seen = []
    plain_forward = st_module.forward
    def forward(graphdef, params, batch):  # record how many devices each batch ran on
        out = plain_forward(graphdef, params, batch)
        devices_seen.append(len(out["sentence_embedding"].sharding.device_set))
        return out
    st_module.forward = forward

    model = SentenceTransformer(folder)
    oracle = np.load(oracle_path)
    single = model.encode(texts, batch_size=12, device="cpu:0")
    report["single_runs_on"] = sorted(set(devices_seen)); devices_seen.clear()
    diff = lambda a: float(np.abs(np.asarray(a) - single).max())

    sharded = model.encode(texts, batch_size=12)  # default: every local device
    report["default_runs_on"] = sorted(set(devices_seen)); devices_seen.clear()
    report["default_vs_single"] = diff(sharded)
    report["single_vs_oracle"] = float(np.abs(single - oracle).max())
    report["default_vs_oracle"] = float(np.abs(sharded - oracle).max())

    report["device_list"] = diff(model.encode(texts, batch_size=12, device=["cpu:0", "cpu:5", "cpu:2"]))
    report["device_list_runs_on"] = sorted(set(devices_seen)); devices_seen.clear()

    pool = model.start_multi_process_pool()
    report["pool_devices"] = len(pool["devices"])
    report["pool"] = diff(model.encode(texts, batch_size=12, pool=pool, chunk_size=10))
    report["pool_runs_on"] = sorted(set(devices_seen)); devices_seen.clear()
    report["pool_query"] = float(np.abs(model.encode_query(texts, pool=pool, chunk_size=16)
                                        - model.encode_query(texts, device="cpu:0")).max())
    report["pool_tokens"] = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(
        model.encode(texts, pool=pool, output_value="token_embeddings"),
        model.encode(texts, device="cpu:0", output_value="token_embeddings")))
    report["pool_ubinary_equal"] = bool(np.array_equal(
        model.encode(texts, pool=pool, precision="ubinary"), model.encode(texts, precision="ubinary", device="cpu:0")))
    model.stop_multi_process_pool(pool)
    try:
        model.encode(texts, pool=pool)
        report["stopped_pool"] = "no error"
    except ValueError as e:
        report["stopped_pool"] = str(e)

    four = model.start_multi_process_pool(["cpu"] * 4)  # sentence-transformers' CPU default spelling
    devices_seen.clear()
    report["four_devices"] = [d.id for d in four["devices"]]
    report["four"] = diff(model.encode(texts, batch_size=12, pool=four))
    report["four_runs_on"] = sorted(set(devices_seen)); devices_seen.clear()
    report["too_many"] = len(model.start_multi_process_pool(["cpu"] * 20)["devices"])
    print(json.dumps(report))
"""


def test_eight_cpu_devices_equal_one(folder, oracle):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "JAX_PLATFORMS": "cpu", "JAXST_COMPILATION_CACHE": "0",
           "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(SCRIPT), str(folder), str(oracle),
                             json.dumps(texts())], capture_output=True, text=True, timeout=480, env=env)
    assert result.returncode == 0, result.stderr
    r = json.loads(result.stdout.strip().splitlines()[-1])
    print(r)
    assert r["local_devices"] == 8
    assert r["single_runs_on"] == [1] and r["default_runs_on"] == [8] and r["pool_runs_on"] == [8]
    assert r["device_list_runs_on"] == [3] and r["four_runs_on"] == [4]
    assert r["single_vs_oracle"] < 1e-5 and r["default_vs_oracle"] < 1e-5  # sentence-transformers' numbers
    for key in ("default_vs_single", "device_list", "pool", "pool_query", "four"):  # normalized embeddings
        assert r[key] < SHARDED_TOL, (key, r[key])
    assert r["pool_tokens"] < 1e-5  # token states are not normalized (values of several units): fp32 tolerance
    assert r["pool_ubinary_equal"]
    assert r["pool_devices"] == 8 and r["four_devices"] == [0, 1, 2, 3] and r["too_many"] == 8
    assert "stopped" in r["stopped_pool"]


def test_pool_api_on_one_device(folder):
    from jaxst import SentenceTransformer

    model = SentenceTransformer(str(folder))
    pool = model.start_multi_process_pool(target_devices=None)
    np.testing.assert_allclose(model.encode(texts(), pool=pool, chunk_size=5), model.encode(texts()), atol=1e-6,
                               rtol=0)
    assert model.encode("one text", pool=pool).shape == (64,)
    with pytest.raises(ValueError, match="chunk_size"):
        model.encode(texts(), pool=pool, chunk_size=0)
    with pytest.raises(TypeError, match="start_multi_process_pool"):
        model.encode(texts(), pool={"input": None})
    with pytest.raises(ValueError, match="not available"):
        model.start_multi_process_pool(["cpu:7"])
    with pytest.raises(ValueError, match="unknown device"):
        model.start_multi_process_pool(["abacus"])
    with pytest.raises(TypeError, match="target devices"):
        model.start_multi_process_pool([])
    SentenceTransformer.stop_multi_process_pool(pool)
    with pytest.raises(ValueError, match="stopped"):
        model.encode(texts(), pool=pool)
