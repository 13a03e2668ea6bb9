"""Validation messages a person can act on: each names its field in backticks and
carries no Python-isms (class names, "Value error, ", "after validation")."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from app.body_limits import openapi_operations
from app.main import _json_error_message, _param, _validation_message
from app.schemas.common import clean_name, unprintable_problem
from app.schemas.datasets import DatasetForm
from app.schemas.jobs import JobCreate

SPEC = {"dataset_id": "ds_0193a1b2c3d4e5f6a7b8c9d0", "base_model": "resnet18"}


def message_for(body: Any) -> str:
    """The message the API answers for `body` as a job spec."""
    with pytest.raises(ValidationError) as caught:
        JobCreate.model_validate(body)
    first = dict(caught.value.errors()[0])
    first["loc"] = ("body", *first["loc"])
    return _validation_message(first, _param(first["loc"]))


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        (
            {"strategy": "sideways"},
            "Invalid `strategy`: Input should be 'linear_probe', 'partial' or 'full'.",
        ),
        (
            {"hyperparameters": {"epochs": 10**30}},
            "Invalid `hyperparameters.epochs`: Input should be less than or equal to 500.",
        ),
        (
            {"dataset_id": "d" * 65},
            "Invalid `dataset_id`: String should have at most 64 characters.",
        ),
        ({"colour": "red"}, "Unknown field `colour`."),
        ({"hyperparameters": [1, 2]}, "Invalid `hyperparameters`: Input should be a JSON object."),
        ({"export": "onnx"}, "Invalid `export`: Input should be a JSON array."),
        (
            {"export": ["onnx"] * 5},
            "Invalid `export`: List should have at most 4 items, not 5.",
        ),
        ({"quantization": ["fp16", "fp16"]}, "`quantization` lists fp16 more than once."),
        (
            {"base_model": "resnet\x1b[0m"},
            "`base_model` contains a control character (U+001B); ids must be printable text.",
        ),
    ],
    ids=[
        "enum",
        "int-too-big",
        "string-too-long",
        "extra-field",
        "nested-model-type",
        "list-type",
        "too-many-items",
        "duplicates",
        "control-char-in-id",
    ],
)
def test_messages_name_the_field_without_python_reprs(over: dict[str, Any], expected: str) -> None:
    message = message_for({**SPEC, **over})
    assert message == expected
    for python_ism in ("Value error", "after validation", "instance of", "dictionary"):
        assert python_ism not in message


def test_a_missing_field_and_a_missing_body() -> None:
    assert message_for({"base_model": "resnet18"}) == "Missing required field `dataset_id`."
    missing_body = {"type": "missing", "loc": ("body",), "msg": "Field required"}
    assert _validation_message(missing_body, None) == (
        "The request body is missing: send a JSON object."
    )
    not_object = {"type": "model_attributes_type", "loc": ("body",), "msg": "Input should be …"}
    assert "must be a JSON object" in _validation_message(not_object, None)


def test_json_errors_give_line_and_column() -> None:
    err = {"type": "json_invalid", "loc": ("body", 14), "ctx": {"error": "Expecting ':' delimiter"}}
    assert _json_error_message(err, '{"a": 1,\n "b" 2}') == (
        "The request body is not valid JSON: Expecting ':' delimiter at line 2, column 6."
    )


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("bad\x00", "contains a control character (U+0000)"),
        ("\x1b[31mred", "contains a control character (U+001B)"),
        ("tab\there", "contains a control character (U+0009)"),
        ("c1\x85", "contains a control character (U+0085)"),
        ("del\x7f", "contains a control character (U+007F)"),
        ("abc\u202egnp.exe", "contains a bidirectional override (U+202E)"),
        ("isolate\u2066", "contains a bidirectional override (U+2066)"),
        ("zero\u200bwidth", "contains an invisible character (U+200B)"),
        ("bom\ufeff", "contains an invisible character (U+FEFF)"),
    ],
)
def test_unprintable_names_are_refused_naming_the_character(name: str, problem: str) -> None:
    assert unprintable_problem(name) == f"{problem}; names must be printable text"
    with pytest.raises(ValidationError) as caught:
        DatasetForm.model_validate({"name": name})
    first = caught.value.errors()[0]
    assert _validation_message(dict(first), "name") == (
        f"`name` {problem}; names must be printable text."
    )


@pytest.mark.parametrize("name", ["pets-v1", "Café crème", "猫と犬", "گربه\u200cها", "👨\u200d👩"])
def test_printable_names_pass(name: str) -> None:
    assert unprintable_problem(name) is None
    assert DatasetForm.model_validate({"name": name}).name == name


def test_names_taken_from_file_names_are_cleaned_not_refused() -> None:
    assert clean_name("\x1b[31mpets\u202e.zip", "dataset") == "[31mpets.zip"
    assert clean_name("x" * 500, "dataset") == "x" * 200
    assert clean_name("\x00\x01", "dataset") == "dataset"
    assert clean_name(None, "dataset") == "dataset"


def test_openapi_operations_resolve_paths_and_multipart_bodies() -> None:
    multipart = {"requestBody": {"content": {"multipart/form-data": {}}}}
    document = {
        "paths": {
            "/v1/models/{model_id}/predict": {"post": multipart},
            "/v1/jobs": {"get": {}, "post": {"requestBody": {"content": {"application/json": {}}}}},
        }
    }
    ops = {(op.method, op.path.pattern, op.multipart) for op in openapi_operations(document)}
    assert ("POST", "^/v1/models/(?P<model_id>[^/]+)/predict$", True) in ops
    assert ("POST", "^/v1/jobs$", False) in ops and ("GET", "^/v1/jobs$", False) in ops
