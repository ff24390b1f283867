"""The digits task: cheque digits from 8x8 images or PNGs, schema to served amount (no Ray)."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw
from pydantic import ValidationError

from serving import dataplane
from serving.errors import InvalidInput, RequestTimeout
from serving.protocol.v1 import PredictRequest
from serving.protocol.v2 import InferenceRequest
from serving.tasks import PostprocessContext, get_task
from serving.tasks.digits import (
    MAX_PNG_BASE64_CHARS,
    MAX_PNG_SIDE,
    PIXEL_COLUMNS,
    REVIEW_CONFIDENCE,
    DigitImage,
    png_size,
    png_to_image,
)

TASK = get_task("digits")


def _digits():
    data = TASK.sample_data()
    return data, *TASK.split(data, seed=0)


def _png(image: np.ndarray, size: int = 64, *, dark_on_light: bool = True) -> bytes:
    """Render an 8x8, 0-16 digit as a PNG of ``size`` pixels (ink dark on white paper)."""
    ink = image / 16.0
    gray = 255 * (1 - ink) if dark_on_light else 255 * ink
    img = Image.fromarray(gray.round().astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return _encode(img)


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def _shifted_corr(a: np.ndarray, b: np.ndarray) -> float:
    """Best correlation over shifts of b by up to a pixel (decoding centres the digit)."""
    best = -1.0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = np.roll(np.pad(b, 1), (dy, dx), axis=(0, 1))[1:-1, 1:-1]
            best = max(best, _corr(a, shifted))
    return best


ZERO = np.zeros((8, 8)).tolist()


# --- the task route's record -------------------------------------------------------------
def test_task_is_discovered_with_its_route_and_outputs():
    assert (TASK.name, TASK.route) == ("digits", "read")
    assert TASK.input_spec.shape == (-1, 8, 8) and TASK.input_spec.datatype == "FP32"
    assert [s.name for s in TASK.output_specs] == ["digit", "confidence", "probabilities"]


def test_records_take_an_image_or_a_png():
    data, _, _ = _digits()
    records = [DigitImage(image=data.raw[0].tolist()),
               DigitImage(png_base64=_b64(_png(data.raw[1]))),
               DigitImage(png_base64="data:image/png;base64," + _b64(_png(data.raw[2])))]
    raw = TASK.check_raw(TASK.records_to_raw(records))
    assert raw.shape == (3, 8, 8) and raw.dtype == np.float32
    np.testing.assert_array_equal(raw[0], data.raw[0])
    assert _corr(raw[1], data.raw[1]) > 0.9 and raw.max() <= 16


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"image": ZERO, "png_base64": _b64(_png(np.full((8, 8), 8.0)))}, "exactly one"),
        ({}, "exactly one"),
        ({"image": ZERO[:7]}, "at least 8"),
        ({"image": [[0.0] * 9] * 8}, "at most 8"),
        ({"image": [[0.0] * 8] * 9}, "at most 8"),
        ({"image": [[17.0] * 8] * 8}, "less than or equal to 16"),
        ({"image": [[-1.0] * 8] * 8}, "greater than or equal to 0"),
        ({"image": [[float("nan")] * 8] * 8}, "finite number"),
        ({"image": [["3"] * 8] * 8}, "valid number"),
        ({"image": [[True] * 8] * 8}, "valid number"),
        ({"png_base64": "not base64 at all!"}, "not valid base64"),
        ({"png_base64": _b64(b"GIF89a not a png")}, "not a PNG"),
        ({"png_base64": _b64(_encode(Image.new("L", (MAX_PNG_SIDE + 1, 4), 255)))},
         "PNG is 2001x4 pixels; at most 2000x2000"),
        ({"png_base64": _b64(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)}, "no IHDR chunk"),
        ({"png_base64": ""}, "at least 1"),
        ({"png_base64": "A" * (MAX_PNG_BASE64_CHARS + 4)}, "at most"),
        ({"image": ZERO, "amount": 5}, "Extra inputs"),
    ],
)
def test_bad_records_fail_validation_with_a_clear_message(fields, message):
    with pytest.raises(ValidationError, match=message):
        DigitImage(**fields)


def test_bad_records_are_422s_on_the_task_route():
    """What pydantic lets through but cannot be read is an InvalidInput (HTTP 422)."""
    good = _png(np.full((8, 8), 8.0))
    cases = {
        "cannot be decoded": good[:60],  # PNG signature, truncated data
        "no digit": _encode(Image.new("L", (40, 40), 255)),  # blank paper
    }
    for message, png in cases.items():
        record = DigitImage(png_base64=_b64(png))
        with pytest.raises(InvalidInput, match=message) as caught:
            dataplane.decode_records([DigitImage(image=ZERO), record], TASK)
        assert "records.1.png_base64" in caught.value.message
        assert caught.value.status_code == 422
    with pytest.raises(InvalidInput, match="not a PNG"):
        png_to_image(_encode(Image.new("L", (20, 20), 255), "JPEG"))


# --- PNG decoding ------------------------------------------------------------------------
def test_png_of_a_digit_decodes_back_to_its_8x8_image():
    data, _, holdout = _digits()
    png = _png(data.raw[0], size=64)
    decoded = png_to_image(_b64(png))
    assert decoded.shape == (8, 8) and decoded.dtype == np.float32
    assert decoded.min() >= 0 and decoded.max() == pytest.approx(16)
    assert _corr(decoded, data.raw[0]) > 0.95
    # every held-out digit: decoding centres the digit, so allow a shift of up to a pixel
    scores = [_shifted_corr(a, png_to_image(_png(a))) for a in holdout.raw]
    assert np.mean(scores) > 0.93 and min(scores) > 0.7


def test_png_decoding_ignores_colours_size_position_and_transparency():
    data, _, _ = _digits()
    image = data.raw[3]
    reference = png_to_image(_png(image))
    ink = Image.fromarray((255 * image / 16).round().astype(np.uint8)).resize((90, 90))
    # a big off-centre scan on off-white paper, blue ink
    paper = Image.new("RGB", (400, 260), (245, 242, 230))
    blue = Image.new("RGB", ink.size, (20, 30, 120))
    paper.paste(blue, (250, 40), ink)
    # a canvas drawing: black strokes on a transparent background
    canvas = Image.new("RGBA", (90, 90), (0, 0, 0, 0))
    canvas.putalpha(ink)
    variants = {
        "light on dark": _png(image, dark_on_light=False),
        "large": _png(image, size=600),
        "tiny": _png(image, size=12),
        "scan": _encode(paper),
        "transparent": _encode(canvas),
        "palette": _encode(Image.open(io.BytesIO(_png(image))).convert("P")),
    }
    for name, png in variants.items():
        assert _corr(png_to_image(png), reference) > 0.95, name


def test_thin_pen_strokes_are_thickened_towards_the_training_digits():
    img = Image.new("L", (200, 300), 255)
    ImageDraw.Draw(img).ellipse((40, 20, 160, 280), outline=0, width=3)  # a thin zero
    decoded = png_to_image(_encode(img))
    assert decoded.sum() / (64 * 16) >= 0.2  # scikit-learn's digits: 0.25 to 0.32
    assert decoded[3:5, 3:5].max() < 4  # the hole of the zero stays open


# --- raw inputs (V2 and V1), preprocessing, data ---------------------------------------------
def test_raw_images_are_checked_for_shape_range_and_finiteness():
    data, _, _ = _digits()
    raw = data.raw[:3]
    assert TASK.check_raw(raw).shape == (3, 8, 8)
    assert TASK.check_raw(raw[..., None]).shape == (3, 8, 8)  # [N, 8, 8, 1] accepted
    for bad in (raw[0], raw.reshape(3, 64), raw[:, :, :7], np.zeros((0, 8, 8))):
        with pytest.raises(InvalidInput, match=r"shape|empty"):
            TASK.check_raw(bad)
    for value, message in ((17.0, r"image must hold values >= 0 and <= 16; got 17 in example "
                                  r"1 at \[2, 3\]"),
                           (-0.5, "image must hold values >= 0 and <= 16; got -0.5"),
                           (np.nan, "NaN"), (np.inf, "NaN")):
        bad = raw.copy()
        bad[1, 2, 3] = value
        with pytest.raises(InvalidInput, match=message):
            TASK.check_raw(bad)


def test_v2_and_v1_requests_carry_images():
    data, _, _ = _digits()
    images = data.raw[:2]
    v2 = InferenceRequest(inputs=[{"name": "image", "shape": [2, 8, 8], "datatype": "FP32",
                                   "data": images.reshape(-1).tolist()}])
    np.testing.assert_array_equal(dataplane.decode_v2(v2, TASK), images)
    v1 = PredictRequest(instances=[{"image": im.astype(int).tolist()} for im in images])
    np.testing.assert_array_equal(dataplane.decode_v1(v1, TASK), images)
    pngs = InferenceRequest(inputs=[{"name": "image", "shape": [1], "datatype": "BYTES",
                                     "data": [_b64(_png(images[0]))]}])
    with pytest.raises(InvalidInput, match="must be FP32"):
        dataplane.decode_v2(pngs, TASK)


def test_preprocessing_flattens_row_major_and_scales_to_unit():
    _, train, holdout = _digits()
    params = TASK.fit_preprocessing(train)
    x = TASK.preprocess(TASK.check_raw(holdout.raw), params)
    assert x.shape == (len(holdout), params["input_width"]) == (360, 64)
    assert x.dtype == np.float32 and x.min() >= 0 and x.max() <= 1
    assert x[5, 3 * 8 + 4] == pytest.approx(holdout.raw[5, 3, 4] / 16)


def test_split_is_stratified_and_seeded():
    data, train, holdout = _digits()
    assert (len(train), len(holdout)) == (1437, 360)
    assert set(np.bincount(holdout.target, minlength=10)) <= {35, 36, 37}
    again = TASK.split(data, seed=0)[1]
    other = TASK.split(data, seed=1)[1]
    assert again.target.tolist() == holdout.target.tolist()
    assert not np.array_equal(other.raw, holdout.raw)


def test_user_csv_has_64_pixel_columns_and_a_label(tmp_path):
    data = TASK.sample_data(seed=0, n=30)
    header = ",".join([*PIXEL_COLUMNS, "label"])
    lines = [",".join([*(f"{v:g}" for v in im.reshape(-1)), str(t)])
             for im, t in zip(data.raw, data.target, strict=True)]
    (tmp_path / "digits.csv").write_text("\n".join([header, *lines]) + "\n")
    loaded = TASK.load_data(tmp_path / "digits.csv")
    np.testing.assert_array_equal(loaded.raw, data.raw)
    np.testing.assert_array_equal(loaded.target, data.target)
    columns = {c: [0.0] for c in PIXEL_COLUMNS}
    with pytest.raises(ValueError, match=r"missing column.*label"):
        TASK.dataset_from_columns(columns)
    with pytest.raises(ValueError, match="0 to 16"):
        TASK.dataset_from_columns({**columns, "p5": [20.0], "label": [1]})
    with pytest.raises(ValueError, match="digit 0-9"):
        TASK.dataset_from_columns({**columns, "label": [10]})


# --- postprocessing and the amount --------------------------------------------------------
def _scores(digits, confidence):
    scores = np.full((len(digits), 10), 0.0, np.float32)
    for row, (d, c) in enumerate(zip(digits, confidence, strict=True)):
        scores[row] = (1 - c) / 9
        scores[row, d] = c
    return {"scores": scores}


def test_postprocess_reads_digit_confidence_and_probabilities():
    out = TASK.postprocess(_scores([1, 2, 5, 0], [0.99, 0.97, 0.9, 0.95]), PostprocessContext({}))
    assert out["digit"].dtype == np.int64 and out["digit"].tolist() == [1, 2, 5, 0]
    np.testing.assert_allclose(out["confidence"], [0.99, 0.97, 0.9, 0.95], rtol=1e-6)
    assert out["probabilities"].shape == (4, 10)
    assert set(out) == {s.name for s in TASK.output_specs}


def test_summary_reads_the_amount_and_flags_low_confidence():
    options = TASK.options(None)
    assert options == {"review_confidence": REVIEW_CONFIDENCE}
    sure = TASK.postprocess(_scores([1, 2, 5, 0], [0.99, 0.97, 0.9, 0.95]), PostprocessContext({}))
    assert TASK.summarize(sure, PostprocessContext({}, options)) == {
        "amount": "1250", "confidence": pytest.approx(0.9), "needs_review": False}
    unsure = TASK.postprocess(_scores([0, 7, 0], [0.99, 0.55, 0.98]), PostprocessContext({}))
    summary = TASK.summarize(unsure, PostprocessContext({}, options))
    assert summary["amount"] == "070" and summary["needs_review"] is True  # leading zero kept
    assert summary["confidence"] == pytest.approx(0.55)
    lenient = TASK.options({"review_confidence": 0.5})
    assert TASK.summarize(unsure, PostprocessContext({}, lenient))["needs_review"] is False
    assert TASK.summarize(unsure, PostprocessContext({}))["needs_review"] is True  # module default
    with pytest.raises(ValueError, match="unknown postprocess option"):
        TASK.options({"threshold": 0.5})


# --- a trained model ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_store(tmp_path_factory: pytest.TempPathFactory):
    """The default digits model (seed 0), trained once for this module."""
    from serving.store import ModelStore
    from serving.training import train

    store = ModelStore(tmp_path_factory.mktemp("digits-store"))
    train("digits", store, seed=0)
    return store


def test_trained_model_beats_the_bar_and_the_majority_class(digits_store):
    m = digits_store.manifest("digits")
    assert (m.task, m.training_data["holdout_rows"]) == ("digits", 360)
    assert m.metrics["metric"] == "accuracy"
    assert m.metrics["value"] >= 0.95
    assert m.metrics["baseline_name"] == "majority class" and m.metrics["baseline"] < 0.15
    assert m.preprocessing["input_width"] == 64


def test_reads_an_amount_from_pngs_end_to_end(digits_store):
    from serving.runtime import ModelRunner, TaskProcessing

    versions = digits_store.versions("digits")
    steps = TaskProcessing(digits_store, "digits", "digits", versions)
    runner = ModelRunner(digits_store, "digits", "digits", versions, intra_op_threads=1)
    runner.load_all()
    version = versions[0]

    def read(raw: np.ndarray) -> dict[str, np.ndarray]:
        batch = steps.preprocess(version, TASK.check_raw(raw))
        batch.data = runner.predict_batch([(version, batch.data)])[0]
        return steps.postprocess(version, batch)

    _, _, holdout = _digits()
    # every held-out digit read from a PNG, as the task route does
    pngs = [DigitImage(png_base64=_b64(_png(a))) for a in holdout.raw]
    answers = read(dataplane.decode_records(pngs, TASK))
    assert (answers["digit"] == holdout.target).mean() >= 0.95

    # a cheque's courtesy amount: held-out digits the model reads from their 8x8 image
    direct = read(holdout.raw)["digit"]
    chosen = [int(np.flatnonzero((holdout.target == d) & (direct == d))[0]) for d in (1, 2, 5, 0)]
    records = [DigitImage(png_base64=_b64(_png(holdout.raw[i], size=64))) for i in chosen]
    answers = read(dataplane.decode_records(records, TASK))
    summary = TASK.summarize(answers, PostprocessContext({}, steps.options))
    assert summary["amount"] == "1250"
    assert summary["confidence"] == pytest.approx(float(answers["confidence"].min()), abs=1e-6)
    assert summary["needs_review"] == bool((answers["confidence"] < REVIEW_CONFIDENCE).any())
    assert dataplane.rows(answers)[0]["digit"] == 1


# --- admission: cheap checks first, PNGs decoded off the event loop -----------------------
def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose IHDR declares ``width`` x ``height`` followed by bytes no decoder takes."""
    ihdr = struct.pack(">II5B", width, height, 8, 0, 0, 0, 0)
    chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(chunk[4:])) + b"junk"


def test_the_declared_png_size_is_read_from_its_header_without_decoding():
    assert png_size(_encode(Image.new("L", (37, 1999), 255))) == (37, 1999)
    assert png_size(png_declaring(2000, 2000)) == (2000, 2000)  # junk pixels: never read
    for width, height in ((100_000, 100_000), (0, 5), (5, 2001)):
        with pytest.raises(InvalidInput, match=f"PNG is {width}x{height} pixels; at most"):
            png_size(png_declaring(width, height))
        with pytest.raises(ValidationError, match=f"PNG is {width}x{height} pixels"):
            DigitImage(png_base64=_b64(png_declaring(width, height)))


def largest_png() -> str:
    """A 2000x2000 PNG of a zero: the largest a record may send, about 0.1 s to decode."""
    img = Image.new("L", (MAX_PNG_SIDE, MAX_PNG_SIDE), 255)
    ImageDraw.Draw(img).ellipse((500, 200, 1500, 1800), outline=0, width=60)
    return _b64(_encode(img))


def test_pngs_are_decoded_off_the_event_loop_and_within_the_timeout():
    """Decoding stalled the gateway's event loop (health checks seconds late) and ran
    outside the request timeout."""
    records = [DigitImage(png_base64=largest_png())] * 10

    async def decode_while_ticking() -> tuple[np.ndarray, float, float]:
        gaps: list[float] = []

        async def tick() -> None:
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.005)
                gaps.append(time.perf_counter() - last)
                last = time.perf_counter()

        ticker = asyncio.create_task(tick())
        started = time.perf_counter()
        raw = await dataplane.decode_records_within(records, TASK, timeout_s=60)
        took = time.perf_counter() - started
        ticker.cancel()
        return raw, took, max(gaps)

    raw, took, gap = asyncio.run(decode_while_ticking())
    assert raw.shape == (10, 8, 8) and raw[0].max() == 16
    assert gap < min(0.3, took / 3), (gap, took)
    started = time.perf_counter()
    with pytest.raises(RequestTimeout, match=r"within 0\.05s"):
        asyncio.run(dataplane.decode_records_within(records, TASK, timeout_s=0.05))
    assert time.perf_counter() - started < took / 2  # the thread stops at its deadline too
    with pytest.raises(RequestTimeout, match="not decoded in time"):
        TASK.records_to_raw_within(records, deadline=time.monotonic() - 1)
