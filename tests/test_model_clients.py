"""Model clients against a real HTTP server on loopback: transient failures are retried with
backoff, a sick candidate trips the circuit breaker, batched calls in the three formats, and
calls made from a call process answer as calls made in-process."""

from __future__ import annotations

import asyncio

import numpy as np
import orjson
import pyarrow as pa
import pytest
from models_for_tests import logistic, logistic_of_tensor, refuses_negative

from shadowdiff.replay.models.call_process import ProcessHttpModel
from shadowdiff.replay.models.http import HttpModel, decode, encode
from shadowdiff.replay.models.inprocess import PythonModel
from shadowdiff.replay.testing import ModelServer, ServerBehaviour
from shadowdiff.schemas.config import ModelSpec
from shadowdiff.schemas.records import ErrorClass

ROWS = [{"x": float(i) / 10, "plan": "pro"} for i in range(40)]


def call(spec: ModelSpec, rows: list[dict]) -> list:
    async def go() -> list:
        client = HttpModel(spec)
        try:
            return await client.predict(rows)
        finally:
            await client.close()

    return asyncio.run(go())


def test_transient_503s_are_retried_and_succeed():
    behaviour = ServerBehaviour(flaky_every=3)  # every third call answers 503
    with ModelServer(logistic, behaviour) as url:
        spec = ModelSpec(name="m", kind="http", url=f"{url}/predict", retries=5, backoff_s=0.001, concurrency=4)
        results = call(spec, ROWS)
        no_retry = call(spec.model_copy(update={"retries": 0}), ROWS)
    assert all(r.error_class is None for r in results)
    assert any(r.attempts >= 2 for r in results)  # some needed a retry
    assert behaviour.calls > len(ROWS)
    # without retries the same server loses about a third of the calls, each recorded
    failed = [r for r in no_retry if r.error_class is not None]
    assert 5 < len(failed) < 25
    assert {(str(r.error_class), r.attempts) for r in failed} == {("http_5xx", 1)}


def test_a_redirect_that_keeps_the_post_on_the_same_host_is_followed_and_others_are_errors():
    with ModelServer(logistic) as url:
        spec = ModelSpec(name="m", kind="http", url=f"{url}/moved", retries=0, concurrency=4)
        moved = call(spec, ROWS)
        direct = call(spec.model_copy(update={"url": f"{url}/predict"}), ROWS)
        elsewhere = call(spec.model_copy(update={"url": f"{url}/elsewhere"}), ROWS[:3])
        found = call(spec.model_copy(update={"url": f"{url}/found"}), ROWS[:3])
    assert [r.output for r in moved] == [r.output for r in direct]
    assert all(r.error_class is None for r in moved)
    # the config's headers never go to another host; a 302 would turn the call into a GET
    for results, status in ((elsewhere, "308"), (found, "302")):
        assert {str(r.error_class) for r in results} == {"http_4xx"}
        assert all(f"HTTP {status}" in (r.error_detail or "") and "set `url`" in (r.error_detail or "") for r in results)


def test_a_failing_candidate_opens_the_breaker_and_is_not_hammered():
    with ModelServer(logistic) as url:
        spec = ModelSpec(
            name="m", kind="http", url=f"{url}/500", retries=0, concurrency=1, breaker_failures=5, breaker_reset_s=60
        )
        results = call(spec, ROWS)
    classes = [str(r.error_class) for r in results]
    assert classes[:5] == ["http_5xx"] * 5
    assert set(classes[5:]) == {"circuit_open"}  # no call was made for these
    assert all(r.attempts == 0 for r in results[5:])


def test_batched_calls_in_each_format_return_one_output_per_row():
    with ModelServer(logistic) as url:
        for kind, path in (("oip-v2", "/v2/models/m/infer"), ("mlflow", "/invocations"), ("http", "/predict")):
            spec = ModelSpec(name="m", kind=kind, url=f"{url}{path}", batch_size=16)
            results = call(spec, ROWS)
            assert len(results) == len(ROWS)
            assert all(r.error_class is None for r in results), kind
            scores = [r.output if isinstance(r.output, float) else r.output["score"] for r in results]
            assert scores == [o["score"] for o in logistic(ROWS)], kind


def test_oip_encoding_is_columnar_with_datatypes():
    spec = ModelSpec(name="m", kind="oip-v2", url="http://127.0.0.1:1/v2/models/m/infer", batch_size=2)
    body = orjson.loads(encode(spec, [{"x": 1.5, "plan": "pro"}, {"x": 2, "plan": None}]))
    tensors = {t["name"]: t for t in body["inputs"]}
    assert tensors["x"] == {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.5, 2]}
    assert tensors["plan"]["datatype"] == "BYTES"
    assert decode(spec, {"outputs": [{"name": "p", "shape": [2, 2], "data": [0.1, 0.9, 0.3, 0.7]}]}, 2) == [
        [0.1, 0.9],
        [0.3, 0.7],
    ]


def test_a_table_model_gets_the_declared_features_in_batches():
    seen: list[pa.Table] = []

    def model(table: pa.Table) -> np.ndarray:
        seen.append(table)
        return np.nan_to_num(table.column("x").to_numpy(zero_copy_only=False)) * 2

    spec = ModelSpec(name="t", kind="python", target="math:fsum", input="table", batch_size=2)
    results = asyncio.run(PythonModel(spec, model).predict_table(pa.table({"x": [1.0, None, 2.5], "plan": ["a", "b", None]})))
    assert [r.output for r in results] == [2.0, 0.0, 5.0]  # numpy scalars came back as floats
    assert all(type(r.output) is float for r in results)
    assert [t.num_rows for t in seen] == [2, 1]
    assert seen[0].column_names == ["x", "plan"]
    with pytest.raises(ValueError, match="python models"):
        ModelSpec(name="h", kind="http", url="http://x", input="table")


def call_both(spec: ModelSpec, rows: list[dict]) -> tuple[list, list]:
    """The same calls from the replay's event loop and from a call process."""

    async def go() -> list:
        client = ProcessHttpModel(spec)
        try:
            return await client.predict_json([orjson.dumps(r).decode() for r in rows])
        finally:
            await client.close()

    return call(spec, rows), asyncio.run(go())


def test_a_call_process_answers_as_the_in_process_client_would():
    with ModelServer(logistic) as url:
        for path, kind, batch in (("/predict", "http", None), ("/v2/models/m/infer", "oip-v2", 8), ("/invocations", "mlflow", 8)):
            spec = ModelSpec(name="m", kind=kind, url=f"{url}{path}", batch_size=batch)
            here, there = call_both(spec, ROWS)
            assert [r.output for r in there] == [r.output for r in here], kind
            assert all(r.error_class is None and r.latency_ms is not None and r.latency_ms > 0 for r in there)
        # failures keep their class, detail and attempts across the process boundary
        for path in ("/html", "/wrong", "/500"):
            spec = ModelSpec(name="m", kind="http", url=f"{url}{path}", retries=1, backoff_s=0.001, response_path="score")
            here, there = call_both(spec, ROWS[:5])
            assert [(r.error_class, r.error_detail, r.attempts) for r in there] == [
                (r.error_class, r.error_detail, r.attempts) for r in here
            ], path
            assert all(isinstance(r.error_class, ErrorClass) for r in there), path
        spec = ModelSpec(name="m", kind="http", url=f"{url}/hang", timeout_s=0.2, retries=0)
        _, there = call_both(spec, ROWS[:3])
        assert {str(r.error_class) for r in there} == {"timeout"}


def test_a_lost_call_process_hands_its_batches_back_to_the_replay(caplog: pytest.LogCaptureFixture):
    behaviour = ServerBehaviour(latency_ms=200, latency_sigma=0.01)
    with ModelServer(logistic, behaviour) as url:
        spec = ModelSpec(name="m", kind="http", url=f"{url}/predict", concurrency=4)
        expected = logistic(ROWS)

        async def go() -> tuple[list, list]:
            client = ProcessHttpModel(spec)
            try:
                first = asyncio.ensure_future(client.predict_json([orjson.dumps(r) for r in ROWS]))
                deadline = asyncio.get_running_loop().time() + 60
                while behaviour.calls == 0:  # the child is calling
                    assert asyncio.get_running_loop().time() < deadline, "the call process never called"
                    assert not first.done(), "the batch finished before any call reached the server"
                    await asyncio.sleep(0.01)
                assert client._proc is not None
                client._proc.kill()  # SIGKILL, mid-batch
                in_flight = await first
                after = await client.predict(ROWS[:4])
                return in_flight, after
            finally:
                await client.close()

        in_flight, after = asyncio.run(go())
    # nothing is lost or blamed on the candidate: both batches were called in-process
    assert [r.output for r in in_flight] == expected
    assert [r.output for r in after] == expected[:4]
    assert all(r.error_class is None for r in in_flight + after)
    assert "calling from the replay's event loop" in caplog.text


def test_oip_requests_say_how_to_read_their_columns_or_send_one_2d_tensor():
    rows = [{"x": float(i) / 10, "y": 1.0, "plan": "pro"} for i in range(40)]
    behaviour = ServerBehaviour()
    with ModelServer(logistic, behaviour) as url:
        spec = ModelSpec(name="m", kind="oip-v2", url=f"{url}/v2/models/m/infer", batch_size=16)
        results = call(spec, rows)
    assert behaviour.oip_parameters == {"content_type": "pd"}  # MLServer's default codec then reads a DataFrame
    assert [r.output for r in results] == [o["score"] for o in logistic(rows)]
    with ModelServer(logistic_of_tensor) as url:
        spec = ModelSpec(
            name="m", kind="oip-v2", url=f"{url}/v2/models/m/infer", batch_size=16, oip_request="tensor", oip_features=["x", "y"]
        )
        results = call(spec, rows)
    assert [r.output for r in results] == [o["score"] for o in logistic(rows)]
    assert all(r.error_class is None for r in results)


def test_a_triton_request_names_its_tensors_as_the_models_config_does():
    # Triton checks an input's name and type against config.pbtxt (its FIL backend's example:
    # input__0 TYPE_FP32 [k], output__0); no Triton server runs on this machine
    import orjson

    from shadowdiff.replay.models.http import encode

    spec = ModelSpec(
        name="m",
        kind="oip-v2",
        url="http://triton:8000/v2/models/churn/infer",
        oip_request="tensor",
        oip_features=["x", "y"],
        oip_tensor_name="input__0",
        oip_tensor_datatype="FP32",
        response_path="output__0",
    )
    body = orjson.loads(encode(spec, [{"x": 1.5, "y": 2}, {"x": None, "y": 0.5}]))
    assert body == {
        "inputs": [{"name": "input__0", "shape": [2, 2], "datatype": "FP32", "data": [1.5, 2, None, 0.5]}],
        "outputs": [{"name": "output__0"}],
    }


def test_one_bad_row_costs_its_own_output_not_its_batch():
    rows = [{"x": float(i) / 10, "plan": "pro"} for i in range(40)]
    rows[13]["x"] = -1.0  # the server answers 500 to any call that holds this row
    with ModelServer(refuses_negative) as url:
        spec = ModelSpec(name="m", kind="mlflow", url=f"{url}/invocations", batch_size=16, retries=0)
        results = call(spec, rows)
    assert [i for i, r in enumerate(results) if r.error_class is not None] == [13]
    assert str(results[13].error_class) == "http_5xx"
    good = [r.output for i, r in enumerate(results) if i != 13]
    assert good == [o for i, o in enumerate(logistic(rows)) if i != 13]


def test_answers_that_cannot_be_read_open_the_breaker():
    # the server answers 200 with JSON, but never with a score where the mapping says
    from shadowdiff.schemas.config import OutputSpec

    with ModelServer(logistic) as url:
        spec = ModelSpec(
            name="m", kind="http", url=f"{url}/wrong", concurrency=1, breaker_failures=5, output=OutputSpec(score_path="score")
        )
        results = call(spec, ROWS)
    classes = [str(r.error_class) for r in results]
    assert classes[:5] == ["None"] * 5  # answered, unreadable: the pipeline records those as wrong_shape
    assert set(classes[5:]) == {"circuit_open"}  # and the breaker opened after five of them


def test_a_model_outage_is_one_line_when_it_starts_and_one_when_it_ends(caplog: pytest.LogCaptureFixture):
    behaviour = ServerBehaviour()
    server = ModelServer(logistic, behaviour)
    url = server.url
    spec = ModelSpec(
        name="v2", kind="http", url=f"{url}/predict", concurrency=1, breaker_failures=3, breaker_reset_s=0.05, retries=0
    )

    async def go() -> tuple[list, list]:
        client = HttpModel(spec)
        try:
            down = await client.predict(ROWS[:10])  # nothing listens yet: refused
            server.start()
            deadline = asyncio.get_running_loop().time() + 30
            while True:  # probes get through once the cool-down passed and the server is up
                up = await client.predict(ROWS[:4])
                if all(r.error_class is None for r in up) or asyncio.get_running_loop().time() > deadline:
                    return down, up
                await asyncio.sleep(0.05)
        finally:
            await client.close()

    with caplog.at_level("WARNING", logger="shadowdiff.replay.models.resilience"):
        down, up = asyncio.run(go())
    server.stop()
    assert {str(r.error_class) for r in down} == {"connection", "circuit_open"}
    assert all(r.error_class is None for r in up)
    lines = [r.getMessage() for r in caplog.records if r.name == "shadowdiff.replay.models.resilience"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("model v2: circuit open after 3 failures in a row (connection: ")
    assert lines[1].startswith("model v2: recovered after ")
