"""Request examples of the OpenAPI document: two real drawings from the Quick, Draw! dataset.

Two short drawings (Quick, Draw! dataset, Google, CC BY 4.0), copied here as literal examples so that a
client generated from the document has working requests at once. They are examples, not data: the
repository holds no data files, and nothing here is read from the shared data folder.
"""

from __future__ import annotations

from typing import Any

ATTRIBUTION = "Quick, Draw! dataset, Google, CC BY 4.0"

# A cat's head, simplified format (integers 0..255): key_id 6261062519226368, drawn in SE, recognized.
CAT = {
    "key_id": "6261062519226368",
    "word": "cat",
    "countrycode": "SE",
    "recognized": True,
    "timestamp": "2017-03-27 13:12:40.01764 UTC",
    "drawing": [
        [[34, 0, 27, 73], [110, 62, 63, 79]],
        [[154, 190, 223, 235, 235, 220, 206], [70, 28, 4, 0, 11, 63, 78]],
        [[154, 114, 104, 69], [65, 64, 71, 84]],
        [
            [29, 28, 35, 49, 75, 97, 111, 135, 150, 162, 179, 198, 199],
            [115, 163, 195, 224, 248, 255, 254, 248, 237, 224, 195, 131, 86],
        ],
    ],
}

# Stitches (not a cat: an anomaly), raw format (canvas pixels, t in ms): key_id 6053733173559296, US, recognized.
STITCHES = {
    "key_id": "6053733173559296",
    "word": "stitches",
    "countrycode": "US",
    "recognized": True,
    "timestamp": "2017-03-28 20:29:08.04594 UTC",
    "drawing": [
        [[605, 629, 628], [173.5, 406.5, 406.5], [0, 9, 50]],
        [[668, 555, 554], [227.5, 243.5, 243.5], [683, 686, 734]],
        [[671, 594, 586, 577, 575], [287.5, 304.5, 304.5, 303.5, 302.5], [2143, 2147, 2159, 2183, 2246]],
        [[667, 570, 568], [375.5, 381.5, 379.5], [2856, 2860, 2919]],
    ],
}


def _source(drawing: dict) -> str:
    return f"{drawing['word']} {drawing['key_id']} ({ATTRIBUTION})"


def _sketch(drawing: dict, fmt: str) -> dict[str, Any]:
    """The drawing as a SketchIn body: client_ref and metadata as a client would send them."""
    body: dict[str, Any] = {"drawing": drawing["drawing"]}
    if fmt == "raw":
        body["format"] = "raw"
    body["client_ref"] = f"quickdraw-{drawing['key_id']}"
    body["metadata"] = {"word": drawing["word"], "countrycode": drawing["countrycode"]}
    return body


def _ndjson_line(drawing: dict, fmt: str) -> dict[str, Any]:
    """The drawing as a Quick Draw ndjson line (its own fields, as in the dataset's files)."""
    return {**{k: drawing[k] for k in ("key_id", "word", "countrycode", "recognized", "timestamp")},
            "format": fmt, "drawing": drawing["drawing"]}  # fmt: skip


def json_examples() -> dict[str, dict]:
    """Examples of the JSON body: one simplified sketch, one raw sketch, a batch of both."""
    return {
        "simplified": {"summary": f"one sketch, simplified: {_source(CAT)}", "value": _sketch(CAT, "simplified")},
        "raw": {"summary": f"one sketch, raw canvas coordinates: {_source(STITCHES)}", "value": _sketch(STITCHES, "raw")},
        "batch": {
            "summary": "a batch: both drawings in one request",
            "value": [_sketch(CAT, "simplified"), _sketch(STITCHES, "raw")],
        },
    }


def ndjson_examples() -> dict[str, dict]:
    """Example of the ndjson body, as its items (each item is one line of the body)."""
    return {
        "quickdraw": {
            "summary": f"two Quick Draw lines ({ATTRIBUTION}); sent as two lines of JSON",
            "value": [_ndjson_line(CAT, "simplified"), _ndjson_line(STITCHES, "raw")],
        }
    }


def multipart_examples() -> dict[str, dict]:
    """Example of the multipart form: the image is a PNG or JPEG file (binary, not shown)."""
    return {
        "photo": {
            "summary": "a PNG of a drawing with a client_ref and metadata",
            "value": {"image": "<PNG or JPEG bytes>", "client_ref": "photo-9", "metadata": {"camera": "phone"}},
        }
    }


def review_examples() -> dict[str, dict]:
    """Examples of a review body."""
    return {
        "cat": {"summary": "the sketch is a cat: not an anomaly", "value": {"verdict": "cat"}},
        "anomaly": {"summary": "the sketch is an anomaly", "value": {"verdict": "anomaly"}},
    }
