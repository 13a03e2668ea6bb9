"""The dashboard (/ui/) in a real headless Chromium against a real `graft serve` (embedded
defaults, its real worker): sign in, upload, start a job from the form and watch it
train live, read its report, download and try its model, and the bad inputs.

The tests run in order on one tab and share what they made (`made`): each needs the
ones before it, and says so when one of them did not get that far.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser.conftest import DOCS, WIDTH
from tests.conftest import ADMIN_KEY, digits_images, wait_for, zip_dataset

pytestmark = pytest.mark.e2e

CLASSES = (0, 1, 2)
PER_CLASS = 30
EPOCHS = 6
made: dict[str, Any] = {}


def need(*names: str) -> list[Any]:
    missing = [n for n in names if n not in made]
    if missing:
        pytest.skip(f"an earlier test did not make {', '.join(missing)}")
    return [made[n] for n in names]


def api(service: dict[str, Any], method: str, path: str, key: str | None = None, **kw: Any) -> Any:
    headers = {"Authorization": f"Bearer {key or service['key']}", **kw.pop("headers", {})}
    return httpx.request(method, service["url"] + path, headers=headers, timeout=60, **kw)


def until(page: Any, js: str, arg: Any = None, timeout: float = 30) -> Any:
    """Poll `js` (a function) in the page until it is truthy. Not page.wait_for_function:
    that evaluates a string, which the dashboard's CSP (no unsafe-eval) refuses."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(js, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {js}")
        time.sleep(0.1)


def go(page: Any, hash_: str) -> None:
    page.evaluate("h => { location.hash = h; }", hash_)


def shot(page: Any, name: str) -> None:
    DOCS.mkdir(exist_ok=True)
    assert page.viewport_size["width"] == WIDTH
    page.screenshot(path=str(DOCS / name), full_page=True)


def digit_png(index: int = 0) -> bytes:
    img = digits_images(classes=(1,), per_class=1, size=16, offset=index)["digit_1"][0]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def dataset_zip() -> bytes:
    """Digits in class folders, and one file that is not an image (to be rejected)."""
    buf = io.BytesIO(zip_dataset(digits_images(classes=CLASSES, per_class=PER_CLASS, size=16)))
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr(zipfile.ZipInfo("digit_0/notes.png", (2020, 1, 1, 0, 0, 0)), b"not a picture")
    return buf.getvalue()


# ---------------------------------------------------------------- signing in


def test_a_wrong_key_is_refused_and_the_right_one_signs_in(
    page: Any, service: dict[str, Any]
) -> None:
    page.goto("/")
    assert page.url.endswith("/ui/")
    wrong = "graft_" + "x" * 43
    expected = api(service, "GET", "/v1/usage", key=wrong).json()["error"]["message"]
    page.fill("#api-key", wrong)
    page.click("form.sign-in button[type=submit]")
    message = page.locator("#sign-in-message")
    message.wait_for()
    assert "key was not accepted" in message.inner_text()
    assert expected in message.inner_text()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("#nav").is_hidden()

    page.fill("#api-key", service["key"])
    page.click("form.sign-in button[type=submit]")
    page.locator("h1", has_text="Datasets").wait_for()
    assert page.evaluate("Object.values(sessionStorage)") == [service["key"]]
    assert service["key"] not in page.url
    assert page.context.cookies() == []


# ---------------------------------------------------------------- a dataset


def test_an_upload_from_the_page_shows_its_class_chart(
    page: Any, service: dict[str, Any], tmp_path: Path
) -> None:
    archive = tmp_path / "digits.zip"
    archive.write_bytes(dataset_zip())
    page.set_input_files("#upload-file", str(archive))
    page.fill("#upload-name", "digits from the page")
    page.click("#upload button[type=submit]")
    until(page, "() => location.hash.startsWith('#/datasets/ds_')")
    dataset_id = page.evaluate("location.hash").removeprefix("#/datasets/")
    bars = page.locator("#class-chart rect.bar")
    bars.first.wait_for(timeout=60_000)  # the page polls while the worker ingests

    dataset = api(service, "GET", f"/v1/datasets/{dataset_id}").json()
    assert dataset["status"] == "ready"
    shown = bars.evaluate_all("rs => rs.map(r => [r.dataset.class, Number(r.dataset.count)])")
    assert shown == [[c["name"], c["count"]] for c in dataset["classes"]]
    assert [n for _, n in shown] == [PER_CLASS] * len(CLASSES)
    rejected = page.locator("#rejected tbody tr")
    assert rejected.count() == 1 and "digit_0/notes.png" in rejected.inner_text()
    assert "split per job" in page.locator("#class-chart figcaption").inner_text()
    # Thumbnails are fetched with the key and shown through blob: URLs.
    until(
        page,
        "n => [...document.querySelectorAll('#samples img.thumb')]"
        ".filter(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0).length >= n",
        len(CLASSES) * 6,
    )
    made["dataset"] = dataset
    shot(page, "dataset.png")


# ---------------------------------------------------------------- a job


def fill_job_form(page: Any, epochs: str) -> None:
    page.select_option("#f-base_model", "resnet18")
    page.select_option("#f-pretrained_weights", "none")
    page.select_option("#f-strategy", "full")
    page.fill("#f-hyperparameters-epochs", epochs)
    page.fill("#f-hyperparameters-batch_size", "16")
    page.fill("#f-hyperparameters-learning_rate", "0.003")
    page.fill("#f-hyperparameters-image_size", "16")
    page.select_option("#f-hyperparameters-augmentation", "none")


def test_the_job_form_shows_the_apis_error_next_to_its_field(
    page: Any, service: dict[str, Any]
) -> None:
    (dataset,) = need("dataset")
    go(page, f"#/new-job?dataset={dataset['id']}")
    page.locator("#job-form").wait_for()
    assert page.input_value("#f-dataset_id") == dataset["id"]
    fill_job_form(page, "0")
    page.click("#job-form button[type=submit]")
    error = page.locator('[data-param="hyperparameters.epochs"] .field-error')
    error.wait_for()
    spec = {
        "dataset_id": dataset["id"],
        "base_model": "resnet18",
        "hyperparameters": {"epochs": 0},
    }
    expected = api(service, "POST", "/v1/jobs", json=spec).json()["error"]
    assert expected["param"] == "hyperparameters.epochs"
    assert error.inner_text() == expected["message"]
    assert page.get_attribute("#f-hyperparameters-epochs", "aria-invalid") == "true"
    assert page.locator("#form-error").inner_text() == ""
    assert api(service, "GET", "/v1/jobs").json()["data"] == []


def test_a_job_from_the_form_draws_its_curves_live(page: Any, service: dict[str, Any]) -> None:
    need("dataset")
    fill_job_form(page, str(EPOCHS))
    page.click("#job-form button[type=submit]")
    until(page, "() => location.hash.startsWith('#/jobs/job_')")
    job_id = page.evaluate("location.hash").removeprefix("#/jobs/")
    made["job_id"] = job_id
    page.locator("#job-status").wait_for()
    page.evaluate("window.sameDocument = true")  # gone if the page reloads
    seen: list[tuple[str, int, str]] = []
    no_metrics_said = False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        status, points, progress, empty = page.evaluate(
            "() => [document.querySelector('#job-status').innerText.trim(),"
            " document.querySelectorAll('#curve-loss circle[data-series=val_loss]').length,"
            " (document.querySelector('#progress-text') || {}).innerText || '',"
            " (document.querySelector('#no-metrics') || {}).innerText || '']"
        )
        seen.append((status, points, progress))
        no_metrics_said = no_metrics_said or (points == 0 and "No metrics yet" in empty)
        if status not in ("queued", "running"):
            break
        time.sleep(0.1)
    assert page.evaluate("window.sameDocument") is True
    assert page.evaluate("location.hash") == f"#/jobs/{job_id}"
    assert seen[-1][0] == "succeeded", seen[-1]
    running = [points for status, points, _ in seen if status == "running"]
    assert running and max(running) - min(running) >= 2, f"points seen while running: {running}"
    assert any(
        "ETA" in text and "images/s" in text for status, _, text in seen if status == "running"
    )
    job = api(service, "GET", f"/v1/jobs/{job_id}").json()
    until(
        page,
        "n => document.querySelectorAll('#curve-accuracy circle[data-series=val_accuracy]')"
        ".length === n",
        len(job["metrics"]),
    )
    assert page.locator("#curve-loss circle").count() == 2 * len(job["metrics"])
    made["job"] = job


def test_the_succeeded_job_shows_its_report(page: Any, service: dict[str, Any]) -> None:
    (job,) = need("job")
    report = job["report"]
    page.locator("#confusion rect.cell").first.wait_for()
    cells = page.locator("#confusion rect.cell").evaluate_all(
        "rs => rs.map(r => [Number(r.dataset.row), Number(r.dataset.col), Number(r.dataset.count)])"
    )
    matrix = report["confusion_matrix"]["matrix"]
    assert sum(c for _, _, c in cells) == report["num_samples"] == sum(map(sum, matrix))
    assert report["num_samples"] == round(
        PER_CLASS * len(CLASSES) * job["spec"]["validation_split"]
    )
    assert {(r, c): n for r, c, n in cells} == {
        (r, c): n for r, row in enumerate(matrix) for c, n in enumerate(row)
    }
    per_class = page.locator("#per-class tbody tr").all_inner_texts()
    assert [row.split("\t")[0] for row in per_class[:-1]] == [
        c["name"] for c in report["per_class"]
    ]
    model = api(service, "GET", f"/v1/models/{job['result']['model_id']}").json()
    variants = [a["format"] for a in model["artifacts"] if a["report"] is not None]
    assert variants == ["onnx", "onnx-int8"]
    rows = page.locator("#report .export-table tbody tr")
    assert rows.evaluate_all("rs => rs.map(r => r.dataset.format)") == variants
    recommended = page.locator("#report .export-table tr.recommended")
    assert recommended.get_attribute("data-format") == model["recommended_artifact"]
    wrong = report["misclassified"][:24]
    assert page.locator("#misclassified figure").count() == len(wrong)
    if wrong:
        until(
            page,
            "() => [...document.querySelectorAll('#misclassified img')]"
            ".every(i => i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0)",
        )
    # The suspected label errors of the report, one figure each (the job JSON's first 24).
    suspects = report["label_issues"][:24]
    assert page.locator("#label-issues figure").count() == len(suspects)
    events = api(service, "GET", f"/v1/jobs/{job['id']}/events").json()
    # The status (polled) can show the end before the stream has brought its last event.
    until(page, "n => document.querySelectorAll('#event-log li').length >= n", len(events))
    log = page.locator("#event-log li").evaluate_all("ls => ls.map(l => l.dataset.type)")
    assert log == [e["type"] for e in events]
    assert page.locator("#job-progress").evaluate("p => p.value") == 1
    made["model"] = model
    shot(page, "job.png")


# ---------------------------------------------------------------- the model


def test_a_download_is_the_artifact_the_model_lists(page: Any, service: dict[str, Any]) -> None:
    (model,) = need("model")
    go(page, f"#/models/{model['id']}")
    page.locator("#artifacts").wait_for()
    assert page.locator("#artifacts button.download").count() == len(model["artifacts"])
    for fmt in ("safetensors", model["recommended_artifact"]):
        with page.expect_download() as info:
            page.click(f'#artifacts button[data-format="{fmt}"]')
        path = info.value.path()
        artifact = next(a for a in model["artifacts"] if a["format"] == fmt)
        assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == artifact["sha256"]
        assert info.value.suggested_filename.endswith(artifact["file"])


def test_try_it_answers_as_the_predict_endpoint(
    page: Any, service: dict[str, Any], tmp_path: Path
) -> None:
    (model,) = need("model")
    image = tmp_path / "one.png"
    image.write_bytes(digit_png(40))
    direct = api(
        service,
        "POST",
        f"/v1/models/{model['id']}/predict",
        files={"files": ("one.png", image.read_bytes(), "image/png")},
    ).json()
    page.set_input_files("#try-file", str(image))
    labels = page.locator("#try-result tbody th.label")
    labels.first.wait_for()
    assert labels.first.inner_text() == direct["results"][0]["predictions"][0]["label"]
    assert labels.count() == len(direct["results"][0]["predictions"])
    shot(page, "model.png")

    text = tmp_path / "notes.png"
    text.write_bytes(b"this is not an image")
    refused = api(
        service,
        "POST",
        f"/v1/models/{model['id']}/predict",
        files={"files": ("notes.png", text.read_bytes(), "image/png")},
    ).json()["results"][0]["error"]["message"]
    page.set_input_files("#try-file", str(text))
    error = page.locator("#try-result .error")
    error.wait_for()
    assert error.inner_text() == refused
    assert page.locator("#try-result tbody tr").count() == 0


def test_an_evaluation_from_the_model_page_shows_its_scores(
    page: Any, service: dict[str, Any]
) -> None:
    (model,) = need("model")
    held_out = zip_dataset(digits_images(classes=CLASSES, per_class=10, size=16, offset=100))
    ds = api(service, "POST", "/v1/datasets", files={"file": ("test.zip", held_out)}).json()
    wait_for(
        lambda: api(service, "GET", f"/v1/datasets/{ds['id']}").json()["status"] == "ready",
        60,
        "the test set to be ingested",
    )
    # Away and back: the model page lists the datasets it can be scored on as it opens.
    go(page, "#/datasets")
    go(page, f"#/models/{model['id']}")
    until(
        page, "id => !!document.querySelector(`#evaluate-dataset option[value='${id}']`)", ds["id"]
    )
    page.select_option("#evaluate-dataset", ds["id"])
    page.select_option("#evaluate-artifact", "onnx-int8")
    page.click("#evaluate")
    until(page, "() => location.hash.startsWith('#/evaluations/ev_')")
    ev_id = page.evaluate("() => location.hash.split('/')[2]")
    page.locator("#evaluation #confusion rect.cell").first.wait_for(timeout=120_000)
    ev = api(service, "GET", f"/v1/evaluations/{ev_id}").json()
    assert (ev["status"], ev["artifact"], ev["dataset_id"]) == ("succeeded", "onnx-int8", ds["id"])
    cells = page.locator("#confusion rect.cell").evaluate_all(
        "rs => rs.map(r => [Number(r.dataset.row), Number(r.dataset.col), Number(r.dataset.count)])"
    )
    matrix = ev["result"]["confusion_matrix"]["matrix"]
    assert {(r, c): n for r, c, n in cells} == {
        (r, c): n for r, row in enumerate(matrix) for c, n in enumerate(row)
    }
    assert sum(map(sum, matrix)) == 30
    shot(page, "evaluation.png")
    # The model page lists it.
    go(page, f"#/models/{model['id']}")
    page.locator("#evaluations").wait_for()
    assert ev_id in page.locator("#evaluations").inner_text()


def test_a_model_without_onnx_says_try_it_needs_an_export(
    page: Any, service: dict[str, Any]
) -> None:
    (model,) = need("model")
    weights = api(service, "GET", f"/v1/models/{model['id']}/artifacts/safetensors").content
    uploaded = api(
        service,
        "POST",
        "/v1/models",
        files={"file": ("mine.safetensors", weights)},
        data={
            "architecture": "resnet18",
            "classes": json.dumps(model["classes"]),
            "image_size": "16",
            "name": "uploaded weights",
        },
    )
    assert uploaded.status_code == 201, uploaded.text
    go(page, f"#/models/{uploaded.json()['id']}")
    message = page.locator("#try-unavailable")
    message.wait_for()
    assert "needs an ONNX export" in message.inner_text()
    assert page.locator("#try-file").count() == 0


def test_cancel_stops_a_job(page: Any, service: dict[str, Any]) -> None:
    (dataset,) = need("dataset")
    spec = {
        "dataset_id": dataset["id"],
        "base_model": "resnet18",
        "pretrained_weights": "none",
        "strategy": "full",
        "hyperparameters": {"epochs": 400, "image_size": 16, "batch_size": 16},
    }
    created = api(service, "POST", "/v1/jobs", json=spec)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    go(page, f"#/jobs/{job_id}")
    page.click("#cancel")
    page.locator("#job-status", has_text="cancelled").wait_for(timeout=60_000)
    assert api(service, "GET", f"/v1/jobs/{job_id}").json()["status"] == "cancelled"
    assert page.locator("#cancel").count() == 0
    page.locator("#event-log li[data-type='job.cancelled']").wait_for()


def test_a_search_shows_its_leaderboard_and_frontier(page: Any, service: dict[str, Any]) -> None:
    (dataset,) = need("dataset")
    # Seed 4 draws resnet18 (int8: about 11 MB) then mobilenet_v3_small (about 1.5 MB).
    request = {
        "dataset_id": dataset["id"],
        "space": {"base_model": ["resnet18", "mobilenet_v3_small"]},
        "fixed": {"pretrained_weights": "none", "image_size": 16, "epochs": 1},
        "constraints": {"quantization": "int8", "max_size_mb": 5},
        "budget": {"max_trials": 2, "max_parallel": 1},
        "sampler": "random",
        "pruner": "none",
        "seed": 4,
    }
    created = api(service, "POST", "/v1/searches", json=request)
    assert created.status_code == 201, created.text
    search_id = created.json()["id"]
    go(page, "#/searches")
    page.locator(f"a[href='#/searches/{search_id}']").click()
    page.locator("#search-status", has_text="succeeded").wait_for(timeout=240_000)
    search = api(service, "GET", f"/v1/searches/{search_id}").json()
    until(page, "n => document.querySelectorAll('#leaderboard tbody tr').length === n", 2)
    small = next(t for t in search["leaderboard"] if t["meets_constraints"])
    assert search["recommended_model_id"] == small["model_id"]
    recommended = page.locator("#leaderboard tr.recommended")
    assert recommended.get_attribute("data-trial") == str(small["number"])
    assert small["model_id"] in page.locator("#recommendation").inner_text()
    # Both trials on the chart; the one over the size limit is marked as missing it.
    circles = page.locator("#pareto circle.trial")
    assert circles.count() == 2
    misses = page.locator("#pareto circle.misses")
    big = next(t for t in search["leaderboard"] if not t["meets_constraints"])
    assert misses.count() == 1 and misses.get_attribute("data-trial") == str(big["number"])
    front = page.locator("#pareto-table tbody tr").count()
    assert front == len(search["pareto_front"]) >= 1
    shot(page, "search.png")
    made["search_id"] = search_id


# ---------------------------------------------------------------- bad ids, narrow windows


def test_another_teams_job_is_not_found(page: Any, service: dict[str, Any]) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    url = service["url"]
    team = httpx.post(f"{url}/v1/teams", json={"name": "other"}, headers=admin).json()
    other = httpx.post(f"{url}/v1/teams/{team['id']}/keys", headers=admin).json()["key"]
    archive = zip_dataset(digits_images(classes=(0, 1), per_class=6, size=16))
    ds = api(service, "POST", "/v1/datasets", key=other, files={"file": ("o.zip", archive)}).json()
    wait_for(
        lambda: (
            api(service, "GET", f"/v1/datasets/{ds['id']}", key=other).json()["status"] == "ready"
        ),
        60,
        "the other team's dataset",
    )
    spec = {"dataset_id": ds["id"], "base_model": "resnet18", "pretrained_weights": "none"}
    job = api(service, "POST", "/v1/jobs", key=other, json=spec)
    assert job.status_code == 201, job.text
    api(service, "POST", f"/v1/jobs/{job.json()['id']}/cancel", key=other)
    for hash_ in (f"#/jobs/{job.json()['id']}", f"#/datasets/{ds['id']}", "#/models/mdl_missing"):
        go(page, hash_)
        page.locator("main h1", has_text="Not found").wait_for()
        assert "not found" in page.locator("main").inner_text().lower()
    assert page.locator("#nav").is_visible()  # still signed in


def test_a_narrow_window_wraps_and_tables_scroll(page: Any) -> None:
    (job,) = need("job")
    page.set_viewport_size({"width": 400, "height": 800})
    try:
        for hash_ in (
            f"#/jobs/{job['id']}",
            f"#/datasets/{job['spec']['dataset_id']}",
            "#/new-job",
            *([f"#/searches/{made['search_id']}"] if "search_id" in made else []),
        ):
            go(page, hash_)
            page.locator("main h1").first.wait_for()
            page.wait_for_timeout(300)
            assert page.evaluate("document.documentElement.scrollWidth") <= 400, hash_
    finally:
        page.set_viewport_size({"width": WIDTH, "height": 900})


def test_every_control_has_a_label(page: Any) -> None:
    (model,) = need("model")
    unlabeled = []
    for hash_ in ("#/new-job", f"#/models/{model['id']}", "#/datasets", "#/jobs", "#/searches"):
        go(page, hash_)
        page.locator("main h1").first.wait_for()
        unlabeled += page.evaluate(
            "() => [...document.querySelectorAll('input, select, button, progress')]"
            ".filter(e => !e.hidden && !(e.labels && e.labels.length)"
            " && !e.getAttribute('aria-label')"
            " && !(e.tagName === 'BUTTON' && e.innerText.trim()))"
            ".map(e => e.outerHTML)"
        )
    assert unlabeled == []


# ---------------------------------------------------------------- sign out, /docs


def test_sign_out_forgets_the_key(page: Any) -> None:
    page.click("#sign-out")
    page.locator("#api-key").wait_for()
    assert page.evaluate("sessionStorage.length") == 0
    assert page.locator("#nav").is_hidden()
    # Without a key every page is the sign-in form.
    go(page, "#/jobs")
    page.wait_for_timeout(200)
    assert page.locator("#api-key").is_visible()


def test_no_script_errors_or_policy_violations(page: Any) -> None:
    assert page.problems == []


def test_docs_render_offline(context: Any) -> None:
    """Swagger UI from the service itself; the context aborts every other host."""
    tab = context.new_page()
    elsewhere: list[str] = []
    tab.on("requestfailed", lambda r: elsewhere.append(r.url))
    try:
        tab.goto("/docs")
        operation = tab.locator('.opblock-summary-path[data-path="/v1/jobs/{job_id}"]').first
        try:
            operation.wait_for(timeout=30_000)
        except Exception as exc:
            shown = tab.locator("body").inner_text()[:500]
            raise AssertionError(
                f"/docs shows no GET /v1/jobs/{{job_id}}; the page says: {shown!r}; "
                f"failed requests: {elsewhere}"
            ) from exc
        block = tab.locator(".opblock-get", has=operation).first
        assert "GET" in block.locator(".opblock-summary-method").inner_text()
        assert elsewhere == []
    finally:
        tab.close()
