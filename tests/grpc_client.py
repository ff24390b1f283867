"""tritonclient.grpc helpers shared by the tiers that call FinServe over gRPC (integration
against a local Ray Serve, e2e against the cluster)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from serving.protocol.codec import V2_DTYPES


def as_inputs(v2_body: dict[str, Any]) -> list[triton.InferInput]:
    """A V2 JSON body's inputs as tritonclient InferInputs (sent as raw contents)."""
    inputs = []
    for tensor in v2_body["inputs"]:
        dtype = V2_DTYPES[tensor["datatype"]]
        array = np.array(tensor["data"], dtype=dtype).reshape(tensor["shape"])
        infer_input = triton.InferInput(tensor["name"], tensor["shape"], tensor["datatype"])
        infer_input.set_data_from_numpy(array)
        inputs.append(infer_input)
    return inputs


def refusal(call: Callable[[], Any]) -> tuple[str, str]:
    """The gRPC status name and message of a call that must fail."""
    with pytest.raises(InferenceServerException) as caught:
        call()
    return str(caught.value.status()).removeprefix("StatusCode."), caught.value.message()


def assert_same_outputs(result: triton.InferResult, http_outputs: list[dict[str, Any]]) -> None:
    """A gRPC answer's outputs equal an HTTP V2 answer's (names, shapes, values)."""
    for output in http_outputs:
        got = result.as_numpy(output["name"])
        assert got is not None, f"no output {output['name']!r}"
        assert list(got.shape) == output["shape"], output["name"]
        if got.dtype == object:
            assert [v.decode() for v in got.reshape(-1)] == output["data"], output["name"]
        else:
            np.testing.assert_allclose(got.reshape(-1), output["data"], rtol=1e-5,
                                       err_msg=output["name"])
