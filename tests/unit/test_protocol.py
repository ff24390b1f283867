import pytest
from pydantic import ValidationError

from serving import dataplane
from serving.errors import BadRequest, InvalidInput, PayloadTooLarge
from serving.protocol.v1 import PredictRequest
from serving.protocol.v2 import InferenceRequest
from serving.tasks import get_task
from tests.conftest import golden


def test_golden_v2_requests_decode_to_each_tasks_raw_batch():
    fraud = dataplane.decode_v2(
        InferenceRequest.model_validate(golden("fraud_v2_request.json")), get_task("fraud")
    )
    assert fraud.shape == (2, 9) and fraud.dtype.name == "float32"
    text = dataplane.decode_v2(
        InferenceRequest.model_validate(golden("sentiment_v2_request.json")), get_task("sentiment")
    )
    assert text.shape == (3,) and text[1].startswith("Regulator")


def test_v2_input_name_and_datatype_must_match_the_metadata():
    task = get_task("fraud")
    body = golden("fraud_v2_request.json")
    body["inputs"][0]["name"] = "x"
    with pytest.raises(InvalidInput, match="expected an input named 'features'"):
        dataplane.decode_v2(InferenceRequest.model_validate(body), task)
    body["inputs"][0].update(name="features", datatype="INT32")
    with pytest.raises(InvalidInput, match="must be FP32"):
        dataplane.decode_v2(InferenceRequest.model_validate(body), task)


def test_v2_request_needs_inputs():
    with pytest.raises(ValidationError):
        InferenceRequest.model_validate({"inputs": []})


def test_v1_rows_and_columns_give_the_same_batch():
    task = get_task("sentiment")
    rows = dataplane.decode_v1(PredictRequest.model_validate(golden("sentiment_v1_request.json")),
                               task)
    texts = golden("sentiment_v1_request.json")["instances"]
    named_rows = dataplane.decode_v1(
        PredictRequest(instances=[{"text": t} for t in texts]), task
    )
    columns = dataplane.decode_v1(PredictRequest(inputs={"text": texts}), task)
    bare_columns = dataplane.decode_v1(PredictRequest(inputs=texts), task)
    for other in (named_rows, columns, bare_columns):
        assert other.tolist() == rows.tolist()


def test_v1_needs_exactly_one_form_and_consistent_rows():
    with pytest.raises(ValidationError, match="exactly one"):
        PredictRequest(instances=["a"], inputs=["a"])
    with pytest.raises(ValidationError, match="exactly one"):
        PredictRequest()
    with pytest.raises(BadRequest, match="mix"):
        dataplane.decode_v1(PredictRequest(instances=["a", {"text": "b"}]), get_task("sentiment"))
    with pytest.raises(InvalidInput, match="no input named"):
        dataplane.decode_v1(PredictRequest(instances=[{"txt": "b"}]), get_task("sentiment"))


def test_outputs_become_rows_and_v2_tensors():
    import numpy as np

    task = get_task("fraud")
    reasons = np.array([["", "", ""], ["F03", "F07", ""]], dtype=object)
    outputs = {"fraud_probability": np.array([0.1, 0.9], np.float32),
               "decision": np.array(["approve", "block"], dtype=object),
               "reason_codes": reasons, "reasons": reasons}
    rows = dataplane.rows(outputs)
    assert rows[1]["decision"] == "block"
    assert rows[0]["fraud_probability"] == pytest.approx(0.1)
    assert rows[0]["reason_codes"] == [] and rows[1]["reason_codes"] == ["F03", "F07"]
    request = InferenceRequest.model_validate(golden("fraud_v2_request.json"))
    response, binary_outputs = dataplane.encode_v2(task, "fraud", "3", outputs, request)
    assert binary_outputs == {}
    assert response.model_version == "3" and response.id == "golden-fraud-1"
    assert [o.name for o in response.outputs][:2] == ["fraud_probability", "decision"]
    assert response.outputs[2].shape == [2, 3]  # V2 keeps the padded tensor
    assert response.outputs[1].datatype == "BYTES" and response.outputs[1].shape == [2]
    request = InferenceRequest.model_validate(
        {**golden("fraud_v2_request.json"), "outputs": [{"name": "nope"}]}
    )
    with pytest.raises(InvalidInput, match="unknown output"):
        dataplane.encode_v2(task, "fraud", "3", outputs, request)


# --- one domain check for every protocol ---------------------------------------------------
FRAUD_ROW = [950.0, 3, 0.85, 1200.0, 6, 0, 1, 20, 7.5]  # a block (0.974) on the default model


def _fraud_v2(rows, shape=None):
    shape = shape or [len(rows), 9]
    return InferenceRequest(inputs=[{"name": "features", "shape": shape, "datatype": "FP32",
                                     "data": rows}])


@pytest.mark.parametrize(("column", "value", "message"), [
    ("merchant_risk", -50, "merchant_risk must be >= 0 and <= 1"),
    ("card_present", 100, "card_present must be 0 or 1"),
    ("foreign", -100, "foreign must be 0 or 1"),
    ("hour", 3.5, "hour must be a whole number >= 0 and <= 23"),
])
def test_v2_binary_and_v1_batches_get_the_task_routes_domain_check(column, value, message):
    """These turned a block into an approve on V2 and TF-Serving, past the Record's ranges."""
    import numpy as np

    from serving.tasks.fraud import FEATURES

    task = get_task("fraud")
    row = list(FRAUD_ROW)
    row[FEATURES.index(column)] = value
    decoders = {
        "v2": lambda: dataplane.decode_v2(_fraud_v2([row]), task),
        "binary": lambda: dataplane.decode_v2(_fraud_v2([]), task,
                                              {0: np.array([row], np.float32)}),
        "v1 rows": lambda: dataplane.decode_v1(PredictRequest(instances=[row]), task),
        "v1 columns": lambda: dataplane.decode_v1(
            PredictRequest(inputs={"features": [row]}), task),
    }
    for protocol, decode in decoders.items():
        with pytest.raises(InvalidInput, match=message):
            decode()
            pytest.fail(protocol)


def test_credit_categories_are_whole_indexes_on_v2():
    task = get_task("credit")
    row = [62000, 0.18, 0.25, 11, 0, 1, 7, 12000, 36, 6, 1, 0]
    for column, value in ((10, 3), (11, 2.5), (11, -1)):
        bad = list(row)
        bad[column] = value
        request = InferenceRequest(inputs=[{"name": "applicant", "shape": [1, 12],
                                            "datatype": "FP32", "data": bad}])
        with pytest.raises(InvalidInput, match="must be a category index"):
            dataplane.decode_v2(request, task)


# --- count first --------------------------------------------------------------------------
OVER_LIMIT = r"^65 instances in one request; the limit is 64$"  # as it always read


def test_v2_and_v1_batches_are_counted_before_their_data_is_converted():
    task = get_task("fraud")
    garbage = [["x"] * 9] * 65  # a 422 once converted; the count comes first
    for decode in (lambda: dataplane.decode_v2(_fraud_v2(garbage), task, max_instances=64),
                   lambda: dataplane.decode_v1(PredictRequest(instances=garbage), task, 64),
                   lambda: dataplane.decode_v1(PredictRequest(inputs=garbage), task, 64)):
        with pytest.raises(PayloadTooLarge, match=OVER_LIMIT):
            decode()
    with pytest.raises(InvalidInput, match="must be a number"):
        dataplane.decode_v2(_fraud_v2(garbage[:64]), task, max_instances=64)
    # a shape no tensor can have is malformed (422), before it is counted
    huge = _fraud_v2([], shape=[4294967296, 4294967296, 9])
    with pytest.raises(InvalidInput, match="at most"):
        dataplane.decode_v2(huge, task, max_instances=64)


def test_task_route_records_are_counted_before_any_is_validated():
    from serving.protocol.task_route import task_request

    task = get_task("fraud")
    batch = task_request(task, 64)
    with pytest.raises(PayloadTooLarge, match=OVER_LIMIT):
        batch.model_validate({"records": [{"amount": "ten"}] * 65})
    with pytest.raises(ValidationError, match="amount"):
        batch.model_validate({"records": [{"amount": "ten"}] * 64})


def test_task_route_parameters_are_validated_with_the_body_and_defaulted():
    from serving.protocol.task_route import request_params, task_request

    task = get_task("forecast")
    body = task_request(task, 64)
    record = {"prices": [100.0 + i for i in range(30)]}
    parsed = body.model_validate({"records": [record], "parameters": {"horizon": 3}})
    assert request_params(task, parsed) == {"horizon": 3}
    assert request_params(task, body.model_validate({"records": [record]})) == \
        task.request_params(None)
    with pytest.raises(ValidationError, match="horizon"):
        body.model_validate({"records": [record], "parameters": {"horizon": 0}})
