import numpy as np
import pytest

from serving.errors import BadRequest, InvalidInput
from serving.protocol.codec import TensorSpec, check_header, from_numpy, rows_to_array, to_numpy


@pytest.mark.parametrize(
    ("datatype", "values", "dtype"),
    [
        ("FP32", [[1.5, 2.0], [3.0, -4.25]], np.float32),
        ("FP64", [[1.5, 2.0], [3.0, -4.25]], np.float64),
        ("INT32", [[1, 2], [3, -4]], np.int32),
        ("INT64", [[1, 2], [3, -4]], np.int64),
        ("UINT8", [[1, 2], [3, 255]], np.uint8),
        ("BOOL", [[True, False], [False, True]], np.bool_),
        ("BYTES", [["a", "b"], ["ü", ""]], np.object_),
    ],
)
def test_round_trip_keeps_values_shape_and_datatype(datatype, values, dtype):
    array = to_numpy("x", datatype, [2, 2], values)
    assert array.dtype == np.dtype(dtype)
    assert array.shape == (2, 2)
    back_type, back_shape, back_data = from_numpy(array)
    assert back_type == datatype
    assert back_shape == [2, 2]
    assert to_numpy("x", back_type, back_shape, back_data).tolist() == array.tolist()


def test_flat_and_nested_data_decode_alike():
    flat = to_numpy("x", "FP32", [2, 3], [1, 2, 3, 4, 5, 6])
    nested = to_numpy("x", "FP32", [2, 3], [[1, 2, 3], [4, 5, 6]])
    np.testing.assert_array_equal(flat, nested)


@pytest.mark.parametrize(
    ("datatype", "shape", "data", "message"),
    [
        ("FP32", [2, 2], [1, 2, 3], "declares shape"),
        ("FP32", [1, 2], [float("nan"), 1], "NaN or infinity"),
        ("FP32", [1, 2], [float("inf"), 1], "NaN or infinity"),
        ("FP32", [1, 2], ["a", 1], "must be a number"),
        ("FP32", [1, 2], [None, 1], "must be a number"),
        ("INT32", [1, 2], [1.5, 1], "whole numbers"),
        ("INT8", [1, 2], [300, 1], "whole numbers"),
        ("BYTES", [2], ["a", 3], "must be a string"),
        ("FLOAT", [1], [1.0], "unknown datatype"),
        ("FP32", [-1, 2], [1, 2], "invalid shape"),
        ("FP32", [1, 1], [10**400], "too large"),
        ("FP32", [1] * 70, [1.0], "dimensions"),
        ("BYTES", [1], ["bad \ud800 text"], "UTF-8"),
    ],
)
def test_bad_tensors_are_rejected_with_a_reason(datatype, shape, data, message):
    with pytest.raises(InvalidInput, match=message):
        to_numpy("x", datatype, shape, data)


def test_spec_accepts_column_vectors_and_rejects_wrong_widths():
    spec = TensorSpec("text", "BYTES", (-1,))
    assert spec.check(np.array([["a"], ["b"]], dtype=object)).shape == (2,)
    wide = TensorSpec("features", "FP32", (-1, 3))
    with pytest.raises(InvalidInput, match=r"shape \[-1, 3\]"):
        wide.check(np.zeros((2, 4), np.float32))
    with pytest.raises(InvalidInput, match="empty batch"):
        wide.check(np.zeros((0, 3), np.float32))


def test_rows_to_array_checks_rows():
    spec = TensorSpec("features", "FP32", (-1, 2))
    assert rows_to_array([[1, 2], [3, 4]], spec).shape == (2, 2)
    with pytest.raises(InvalidInput):
        rows_to_array([[1, 2], [3]], spec)  # ragged
    with pytest.raises(InvalidInput, match="empty batch"):
        rows_to_array([], spec)
    with pytest.raises(BadRequest):
        rows_to_array({"a": 1}, spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("shape", "data", "message"),
    [
        ([3, 2], [[1, 2], [3, 4, 5], [6]], "row 1 has 3 values, expected 2"),
        ([2, 2, 2], [[[1, 2], [3, 4]], [[5, 6], [7, 8, 9]]], r"row \[1\]\[1\] has 3 values"),
        ([2, 3], [[1, 2, 3], 4], "row 1 is not a list of 3 values"),
        ([3, 2], [[1, 2, 3], [4, 5, 6]], "2 rows of nested data but its shape"),
        ([6], [[1, 2, 3], [4, 5, 6]], "send it flat"),
        ([2, 3, 1], [[1, 2, 3], [4, 5, 6]], "fully nested"),
        ([2, 1], [[[1]], [[2]]], "deeper than its shape"),
    ],
)
def test_nested_data_must_have_the_declared_shape_row_by_row(shape, data, message):
    """Ragged rows whose total matches the shape were re-aligned silently."""
    with pytest.raises(InvalidInput, match=message):
        to_numpy("x", "FP32", shape, data)


def test_flat_data_and_regular_nesting_stay_valid():
    assert to_numpy("x", "FP32", [3, 2], [1, 2, 3, 4, 5, 6]).tolist() == [[1, 2], [3, 4], [5, 6]]
    assert to_numpy("x", "FP32", [1, 2, 2], [[[1, 2], [3, 4]]]).shape == (1, 2, 2)
    assert to_numpy("x", "BYTES", [2, 1], [["a"], ["b"]]).shape == (2, 1)


def test_ragged_v1_rows_are_rejected_not_realigned():
    spec = TensorSpec("features", "FP32", (-1, 2))
    with pytest.raises(InvalidInput, match="row 1 has 3 values, expected 2"):
        rows_to_array([[1, 2], [3, 4, 5], [6]], spec)


@pytest.mark.parametrize("shape", [[4294967296, 4294967296, 9], [2**40, 2**40, 2**40],
                                   [0, 2**40], [2**33]])
def test_a_shape_past_the_element_bound_is_a_422_not_an_overflow(shape):
    """np.prod wrapped [2^32, 2^32, 9] around to 0 elements: an empty body then 'matched'."""
    with pytest.raises(InvalidInput, match="at most"):
        check_header("x", "FP32", shape)
    with pytest.raises(InvalidInput, match="at most"):
        to_numpy("x", "FP32", shape, [])
    assert check_header("x", "FP32", [1024, 8, 8]) == (np.float32, 65536)
