"""`POST /v1/models` checks the weights against the architecture they claim, at upload:
every tensor's name, shape and type, the head against the classes; `kind=backbone`
takes the feature extractor alone. A refused upload keeps nothing."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from tests.conftest import Api
from tests.integration.test_datasets_api import assert_error
from tests.weights import weights

pytestmark = [pytest.mark.postgres, pytest.mark.redis]


@pytest.fixture
def api(pg_env: dict[str, str], make_api: Callable[[], Api]) -> Api:
    return make_api()


def post(api: Api, key: str, file: bytes, **form: str) -> Any:
    files = {"file": ("m.safetensors", file, "application/octet-stream")}
    return api.as_team(key, "POST", "/v1/models", files=files, data=form)


def refused(api: Api, key: str, file: bytes, needle: str, **form: str) -> str:
    err = assert_error(post(api, key, file, **form), 422, "weights_mismatch")
    assert err["param"] == "file"
    assert needle in err["message"], err["message"]
    assert api.as_team(key, "GET", "/v1/models").json()["data"] == []
    return str(err["message"])


def test_weights_of_another_architecture_or_class_count_are_refused(api: Api) -> None:
    key = api.new_team()
    small = weights("mobilenet_v3_small", classes=2)
    message = refused(
        api, key, small, "`features.0.0.weight`", architecture="mobilenet_v2", classes='["a", "b"]'
    )
    assert "mobilenet_v2 needs [32, 3, 3, 3]" in message
    # The head has 10 outputs; the model claims 3 classes.
    message = refused(
        api,
        key,
        weights(classes=10),
        "`fc.weight`",
        architecture="resnet18",
        classes='["a", "b", "c"]',
    )
    assert "[10, 512]" in message and "resnet18 with 3 classes needs [3, 512]" in message


def test_a_wrong_tensor_type_or_a_missing_or_unknown_tensor_is_named(api: Api) -> None:
    key = api.new_team()
    form = {"architecture": "resnet18", "classes": '["a", "b"]'}
    as_ints = weights(changed={"layer1.0.conv1.weight": np.zeros((64, 64, 3, 3), np.int64)})
    refused(api, key, as_ints, "`layer1.0.conv1.weight` is stored as I64", **form)
    refused(api, key, weights(changed={"layer4.1.bn2.bias": None}), "`layer4.1.bn2.bias`", **form)
    extra = weights(changed={"fc2.weight": np.zeros((2, 2), np.float32)})
    refused(api, key, extra, "`fc2.weight` is not one of resnet18's", **form)
    # BatchNorm's batch counters may be left out: torch fills them in.
    counters = [n for n in weights_names() if n.endswith("num_batches_tracked")]
    lean = weights(changed=dict.fromkeys(counters))
    assert post(api, key, lean, **form).status_code == 201


def weights_names() -> list[str]:
    from tests.weights import tensors

    return list(tensors("resnet18"))


def test_a_backbone_is_the_feature_extractor_without_head_or_classes(api: Api) -> None:
    key = api.new_team()
    backbone = weights("mobilenet_v2", kind="backbone")
    whole = weights("mobilenet_v2", classes=2)
    # A whole model marked as a backbone, and a backbone uploaded as a whole model.
    refused(api, key, whole, "`classifier.1.bias` is mobilenet_v2's classifier head",
            architecture="mobilenet_v2", kind="backbone")  # fmt: skip
    message = refused(api, key, backbone, "`classifier.1.weight`",
                      architecture="mobilenet_v2", classes='["a", "b"]')  # fmt: skip
    assert "kind=backbone" in message
    with_classes = post(api, key, backbone, architecture="mobilenet_v2", kind="backbone",
                        classes='["a", "b"]')  # fmt: skip
    assert assert_error(with_classes, 422, "invalid_input")["param"] == "classes"
    no_classes = post(api, key, whole, architecture="mobilenet_v2")
    assert assert_error(no_classes, 422, "invalid_input")["message"] == (
        "Missing required field `classes`."
    )

    r = post(api, key, backbone, architecture="mobilenet_v2", kind="backbone", name="imagenet")
    assert r.status_code == 201, r.text
    model = r.json()
    assert model["kind"] == "backbone" and model["classes"] == []
    assert model["architecture"] == "mobilenet_v2"
    # A job from it takes its dataset's classes (a fresh head): accepted at creation.
    read = api.as_team(key, "GET", f"/v1/models/{model['id']}").json()
    assert read["kind"] == "backbone"
