"""Cheque digit recognition: an image of one handwritten digit → the digit (small CNN).

Built-in data: the 1,797 handwritten digits that scikit-learn ships
(``sklearn.datasets.load_digits``, the test part of UCI "optdigits", 13 writers): 8x8 images
whose pixels count the ink pixels of 4x4 blocks of a 32x32 bitmap, so 0 (no ink) to 16.
The digits were size-normalised: each fills the bitmap's height and is roughly centred across.

The task route also takes a PNG of one digit (a crop of a cheque's courtesy amount);
``png_to_image`` turns it into the same 8x8, 0-16 image. On the task route the records of
one request are the digits of one amount, in order, and ``summarize`` reads the amount.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import struct
import time
from functools import lru_cache
from typing import Annotated, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator

from serving.data import require_columns
from serving.errors import InvalidInput, RequestTimeout
from serving.protocol.codec import TensorSpec
from serving.tasks.base import Dataset, Evaluation, PostprocessContext, Task

SIZE = 8  #: image side, pixels
MAX_VALUE = 16.0  #: ink of a fully inked pixel (a 4x4 block of the 32x32 bitmap)
CLASSES = 10
#: user data: one column per pixel, row-major (p0..p7 the top row), and ``label``
PIXEL_COLUMNS: tuple[str, ...] = tuple(f"p{i}" for i in range(SIZE * SIZE))
#: a record's ``png_base64`` at most this many characters (about 150 kB of PNG)
MAX_PNG_BASE64_CHARS = 200_000
#: a PNG at most this many pixels wide and high
MAX_PNG_SIDE = 2000
#: default of the ``review_confidence`` option: an amount needs review when one of its
#: digits is read with a lower confidence
REVIEW_CONFIDENCE = 0.8
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = 24  #: signature, IHDR length and type, then width and height (4 bytes each)
_DATA_URL_PREFIX = "data:image/png;base64,"

_BITMAP = SIZE * 4  #: the 32x32 bitmap whose 4x4 blocks the 8x8 pixels count
_INK_LEVEL = 0.1  #: ink at least this fraction of the darkest stroke marks the digit's box
_MIN_CONTRAST = 0.1  #: ink must differ from the background by this fraction of full scale
_MIN_COVERAGE = 0.25  #: 5th percentile of the ink coverage of scikit-learn's digits
_MAX_DILATIONS = 2
#: margin of the square crop beyond the ink box's longer side, fraction of that side; 0
#: because scikit-learn's digits fill the bitmap's height (0.05 costs ~2 points of accuracy
#: on PNGs of held-out digits)
_MARGIN = 0.0

Pixel = Annotated[float, Strict(), Field(ge=0, le=MAX_VALUE, allow_inf_nan=False)]
Row = Annotated[list[Pixel], Field(min_length=SIZE, max_length=SIZE)]


class DigitImage(BaseModel):
    """One digit of a cheque's courtesy amount: an 8x8 image or a PNG, exactly one."""

    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={"example": {"png_base64": "iVBORw0KGgo..."}},
    )

    image: Annotated[list[Row], Field(min_length=SIZE, max_length=SIZE)] | None = Field(
        None,
        description="8 rows of 8 numbers, 0 (paper) to 16 (ink), as scikit-learn's digits.",
    )
    png_base64: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PNG_BASE64_CHARS,
        description=(
            f"Base64 PNG of one digit, any size up to {MAX_PNG_SIDE}x{MAX_PNG_SIDE} pixels, "
            "dark ink on light paper or light on dark; a data:image/png;base64, prefix is "
            "accepted."
        ),
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> DigitImage:
        if (self.image is None) == (self.png_base64 is None):
            raise ValueError("give exactly one of 'image' (8x8 numbers) or 'png_base64'")
        if self.png_base64 is not None:  # cheap checks; records_to_raw decodes the PNG
            try:
                png_size(decode_base64(self.png_base64))
            except ValueError as exc:
                raise ValueError(f"png_base64: {exc}") from None
            except InvalidInput as exc:
                raise ValueError(f"png_base64: {exc.message}") from None
        return self


def decode_base64(text: str) -> bytes:
    """Strict base64 (whitespace and a ``data:image/png;base64,`` prefix allowed)."""
    if text.startswith(_DATA_URL_PREFIX):
        text = text[len(_DATA_URL_PREFIX):]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64") from None


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height as the PNG's IHDR chunk declares them, read without decoding
    anything; ``InvalidInput`` for bytes that are no PNG or a side over ``MAX_PNG_SIDE``."""
    if not png.startswith(PNG_SIGNATURE):
        raise InvalidInput("not a PNG (no PNG signature)")
    if len(png) < _IHDR_END or png[12:16] != b"IHDR":
        raise InvalidInput("not a PNG (no IHDR chunk after the signature)")
    width, height = struct.unpack(">II", png[16:_IHDR_END])
    if not 0 < width <= MAX_PNG_SIDE or not 0 < height <= MAX_PNG_SIDE:
        raise InvalidInput(
            f"PNG is {width}x{height} pixels; at most {MAX_PNG_SIDE}x{MAX_PNG_SIDE}")
    return width, height


def png_to_image(png: bytes | str) -> np.ndarray:
    """A PNG of one digit (bytes, or base64 text) → an 8x8 float32 image, 0-16.

    The steps mirror how scikit-learn's digits were made from scanned forms: grayscale
    (transparent parts count as white paper); inverted when the background (the median of
    the border pixels) is light, i.e. dark ink on paper as on a cheque; the background level
    subtracted and the strongest stroke scaled to 1; cropped to the square centred on the
    ink's bounding box whose side is the box's longer side (the margin is on the shorter
    side: scikit-learn's digits fill the bitmap's height, and a margin on the longer side
    shrinks the digit and costs accuracy); resized to the 32x32 bitmap, so the aspect ratio
    is kept and the digit centred; thin strokes thickened (``_strokes``); each 4x4 block
    summed; the largest pixel scaled to 16, as in almost all of scikit-learn's digits.

    Raises ``InvalidInput`` for text that is not base64, bytes that are not a decodable PNG,
    a PNG larger than ``MAX_PNG_SIDE`` a side, and an image without visible ink.
    """
    from PIL import Image

    if isinstance(png, str):
        try:
            png = decode_base64(png)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    png_size(png)  # signature and size, before Pillow reads anything
    try:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as img:
            gray = _grayscale(img)
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, zlib.error...
        raise InvalidInput(f"PNG cannot be decoded: {exc}") from None
    return ink_to_image(_ink(gray))


def _grayscale(img: Any) -> np.ndarray:
    """Pixel brightness 0 (black) to 1 (white); transparent parts count as white paper."""
    from PIL import Image

    img.load()
    if img.mode.startswith("I"):  # 16-bit grayscale
        return np.clip(np.asarray(img, dtype=np.float32) / 65535.0, 0, 1)
    if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        paper = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(paper, rgba)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _ink(gray: np.ndarray) -> np.ndarray:
    """Brightness → ink 0 (background) to 1 (the strongest stroke)."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    background = float(np.median(border))
    ink = 1.0 - gray if background > 0.5 else gray
    level = 1.0 - background if background > 0.5 else background
    ink = np.clip(ink - level, 0, None)
    strongest = float(ink.max())
    if strongest < _MIN_CONTRAST:
        raise InvalidInput("no digit in the PNG: nothing stands out from the background")
    return ink / strongest


def ink_to_image(ink: np.ndarray) -> np.ndarray:
    """Ink (any size, 0-1) → the 8x8, 0-16 image of scikit-learn's digits."""
    from PIL import Image

    marked = ink >= _INK_LEVEL
    rows, cols = np.flatnonzero(marked.any(axis=1)), np.flatnonzero(marked.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # the square the 32x32 bitmap covers: centred on the ink's box, its side the box's longer
    # side plus the margin (the shorter side keeps the ink around it)
    side = max(bottom - top, right - left) * (1 + 2 * _MARGIN)
    cy, cx = (top + bottom) / 2, (left + right) / 2
    y0, x0 = int(np.floor(cy - side / 2)), int(np.floor(cx - side / 2))
    y1, x1 = int(np.ceil(cy + side / 2)), int(np.ceil(cx + side / 2))
    height, width = ink.shape
    crop = np.pad(  # zeros (no ink) where the square reaches past the image
        ink[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)],
        ((max(-y0, 0), max(y1 - height, 0)), (max(-x0, 0), max(x1 - width, 0))),
    )
    box = (cx - side / 2 - x0, cy - side / 2 - y0, cx + side / 2 - x0, cy + side / 2 - y0)
    resized = Image.fromarray(crop.astype(np.float32)).resize(
        (_BITMAP, _BITMAP), Image.Resampling.BILINEAR, box=box
    )
    bitmap = _strokes(np.clip(np.asarray(resized, dtype=np.float32), 0, 1))

    image = bitmap.reshape(SIZE, 4, SIZE, 4).sum(axis=(1, 3))
    if image.max() <= 0:
        raise InvalidInput("no digit in the PNG: nothing stands out from the background")
    return (image * (MAX_VALUE / image.max())).astype(np.float32)


def _strokes(bitmap: np.ndarray) -> np.ndarray:
    """Thicken thin strokes (a ballpoint pen on a scan) towards those of scikit-learn's
    digits, whose ink covers 25-32 % of the bitmap: dilate by one pixel (3x3 maximum) while
    the ink covers less than ``_MIN_COVERAGE``, at most ``_MAX_DILATIONS`` times."""
    for _ in range(_MAX_DILATIONS):
        if bitmap.mean() >= _MIN_COVERAGE:
            break
        padded = np.pad(bitmap, 1)
        height, width = bitmap.shape
        bitmap = np.max(
            [padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)],
            axis=0,
        )
    return bitmap


@lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images.astype(np.float32), digits.target.astype(np.int32)


class DigitsTask(Task):
    name = "digits"
    description = "Cheque digit recognition (courtesy amount) from 8x8 images or PNGs, small CNN."
    route = "read"
    quick_training = (None, 10)
    Record = DigitImage
    raw_fields = ("image",)  # every pixel 0 (paper) to 16 (ink), as ``Pixel`` declares
    slow_records = True  # PNGs
    input_spec = TensorSpec(
        "image", "FP32", (-1, SIZE, SIZE), "8x8 digit images, 0 (paper) to 16 (ink)"
    )
    output_specs = (
        TensorSpec("digit", "INT64", (-1,), "the digit read, 0-9", role="decision"),
        TensorSpec("confidence", "FP32", (-1,), "probability of that digit", role="score"),
        TensorSpec("probabilities", "FP32", (-1, CLASSES), "probability of 0, 1, ..., 9",
                   role="score"),
    )
    default_epochs = 15
    batch_size = 32
    default_options: ClassVar[dict[str, Any]] = {"review_confidence": REVIEW_CONFIDENCE}

    # --- data -------------------------------------------------------------------------
    def sample_data(self, seed: int = 0, n: int | None = None) -> Dataset:
        """All 1,797 digits in the order scikit-learn ships them, or a seeded random ``n``."""
        images, target = _load_digits()
        if n is not None:
            if not 0 < n <= len(target):
                raise ValueError(f"scikit-learn's digits has {len(target)} images; asked for {n}")
            order = np.random.default_rng(seed).permutation(len(target))[:n]
            images, target = images[order], target[order]
        return Dataset(raw=images.copy(), target=target.copy())

    def dataset_from_columns(self, columns: dict[str, list[Any]]) -> Dataset:
        require_columns(columns, [*PIXEL_COLUMNS, "label"])
        try:
            pixels = np.column_stack(
                [np.asarray(columns[c], dtype=np.float32) for c in PIXEL_COLUMNS]
            )
            labels = np.asarray(columns["label"], dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError("columns p0..p63 and label must be numbers") from None
        if not np.isfinite(pixels).all() or (pixels < 0).any() or (pixels > MAX_VALUE).any():
            raise ValueError("pixel columns p0..p63 must be numbers from 0 to 16")
        if (~np.isin(labels, np.arange(CLASSES))).any():
            raise ValueError("label must be a digit 0-9")
        return Dataset(raw=pixels.reshape(-1, SIZE, SIZE), target=labels.astype(np.int32))

    def records_to_raw(self, records: list[BaseModel]) -> np.ndarray:
        return self.records_to_raw_within(records, math.inf)

    def records_to_raw_within(self, records: list[BaseModel], deadline: float) -> np.ndarray:
        """Images as they are, PNGs decoded one by one until ``deadline`` has passed."""
        images = []
        for i, record in enumerate(records):
            if record.image is not None:
                images.append(np.asarray(record.image, dtype=np.float32))
                continue
            if time.monotonic() > deadline:
                raise RequestTimeout(f"the PNGs were not decoded in time ({i} of {len(records)})")
            try:
                images.append(png_to_image(record.png_base64))
            except InvalidInput as exc:
                raise InvalidInput(f"records.{i}.png_base64: {exc.message}") from None
        return np.stack(images)

    def split(self, data: Dataset, seed: int = 0, holdout: float = 0.2) -> tuple[Dataset, Dataset]:
        """Stratified by digit (seeded); a plain shuffled split when a digit is too rare."""
        from sklearn.model_selection import train_test_split

        index = np.arange(len(data))
        try:
            train, test = train_test_split(
                index, test_size=holdout, random_state=seed, stratify=data.target
            )
        except ValueError:  # a class with one example, or fewer held-out rows than classes
            return super().split(data, seed, holdout)
        return data.take(np.sort(train)), data.take(np.sort(test))

    # --- preprocessing ----------------------------------------------------------------
    def fit_preprocessing(self, train: Dataset) -> dict[str, Any]:
        counts = np.bincount(train.target, minlength=CLASSES)
        return {
            "size": SIZE,
            "max_value": MAX_VALUE,
            "input_width": SIZE * SIZE,
            "class_counts": counts.tolist(),
            "majority_class": int(counts.argmax()),
        }

    def preprocess(self, raw: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """[N, 8, 8] images, 0-16 → [N, 64] row-major, 0-1 (the model reshapes)."""
        x = np.asarray(raw, dtype=np.float32).reshape(len(raw), -1)
        return x / np.float32(params["max_value"])

    # --- model ------------------------------------------------------------------------
    def build_model(self, params: dict[str, Any]) -> Any:
        import keras

        size = params["size"]
        model = keras.Sequential(
            [
                keras.Input((size * size,), name="inputs"),
                keras.layers.Reshape((size, size, 1)),
                # shifts of up to a pixel, in training only (identity when served)
                keras.layers.RandomTranslation(1 / size, 1 / size, fill_mode="constant"),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
                keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
                keras.layers.MaxPooling2D(2),
                keras.layers.Dropout(0.25),
                keras.layers.Flatten(),
                keras.layers.Dense(128, activation="relu"),
                keras.layers.Dropout(0.3),
                keras.layers.Dense(CLASSES, activation="softmax"),
            ]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy"
        )
        return model

    # --- postprocessing and evaluation -------------------------------------------------
    def postprocess(self, outputs: dict[str, np.ndarray],
                    ctx: PostprocessContext) -> dict[str, np.ndarray]:
        probs = outputs["scores"].astype(np.float32).reshape(-1, CLASSES)
        return {
            "digit": probs.argmax(axis=1).astype(np.int64),
            "confidence": probs.max(axis=1),
            "probabilities": probs,
        }

    def summarize(self, answers: dict[str, np.ndarray],
                  ctx: PostprocessContext) -> dict[str, Any] | None:
        """The records are the digits of one courtesy amount, in order."""
        digits, confidence = answers["digit"], answers["confidence"]
        if len(digits) == 0:
            return None
        threshold = float(ctx.options.get("review_confidence", REVIEW_CONFIDENCE))
        return {
            "amount": "".join(str(int(d)) for d in digits),
            "confidence": round(float(confidence.min()), 6),
            "needs_review": bool((confidence < threshold).any()),
        }

    def evaluate(self, holdout: Dataset, outputs: dict[str, np.ndarray],
                 params: dict[str, Any]) -> Evaluation:
        probs = outputs["scores"].reshape(-1, CLASSES)
        y = holdout.target
        predicted = probs.argmax(axis=1)
        recalls = [float((predicted[y == c] == c).mean()) for c in range(CLASSES) if (y == c).any()]
        correct = predicted == y
        low = probs.max(axis=1) < REVIEW_CONFIDENCE  # amounts with such a digit are reviewed
        return Evaluation(
            metric="accuracy",
            value=float(correct.mean()),
            baseline=float((y == params["majority_class"]).mean()),
            baseline_name="majority class",
            extra={
                "min_class_recall": min(recalls),
                "review_rate": float(low.mean()),
                "accuracy_not_reviewed": float(correct[~low].mean()) if (~low).any() else 0.0,
            },
        )
