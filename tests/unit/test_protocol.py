import pytest
from pydantic import ValidationError

from serving import dataplane
from serving.errors import BadRequest, InvalidInput
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
