"""The handler module through the real sagemaker-inference toolkit (DefaultHandlerService -> Transformer),
the way TorchServe drives it in the PyTorch container: code/inference.py found through SAGEMAKER_PROGRAM, a
request context carrying the headers, and the response status and content type read back from that context."""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import srt
import webvtt
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.errors import GenericInferenceToolkitError

from koe import handler
from koe.deploy.package import INFERENCE_PY
from koe.engine import Engine
from koe.model_files import resolve
from support.serving import JFK_WORDS, vtt_seconds, words


class RequestProcessor:
    """The request-side object of TorchServe's context (ts.context.RequestProcessor's interface)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers
        self.status = 200
        self.phrase: str | None = None
        self.response_headers: dict[str, str] = {}

    def get_request_properties(self) -> dict[str, str]:
        return self.headers

    def get_request_property(self, key: str) -> str | None:
        return self.headers.get(key)

    def report_status(self, code: int, reason_phrase: str | None = None) -> None:
        self.status, self.phrase = code, reason_phrase

    def add_response_property(self, key: str, value: str) -> None:
        self.response_headers[key] = value


class Context:
    """TorchServe's per-worker context (ts.context.Context's interface), reused for every request."""

    def __init__(self, model_dir: Path) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 1}
        self.request_processor: list[RequestProcessor] = [RequestProcessor({})]

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.request_processor[idx].report_status(code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.request_processor[idx].add_response_property("content-type", value)


class Service:
    """A model server worker: one DefaultHandlerService, initialised once, then one call per request."""

    def __init__(self, model_dir: Path) -> None:
        self.context = Context(model_dir)
        self.service = DefaultHandlerService()
        self.service.initialize(self.context)

    def invoke(self, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, Any]:
        processor = RequestProcessor(headers)
        self.context.request_processor = [processor]
        [response] = self.service.handle([{"body": body}], self.context)
        return processor.status, processor.response_headers.get("content-type"), response


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    """/opt/ml/model as SageMaker lays it out from a koe model.tar.gz: model files + code/inference.py."""
    root = tmp_path_factory.mktemp("opt-ml") / "model"
    shutil.copytree(resolve("tiny.en", cache_dir), root)
    (root / "code").mkdir()
    (root / "code" / "inference.py").write_text(INFERENCE_PY)
    return root


@pytest.fixture(scope="module")
def service(model_dir: Path) -> Iterator[Service]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SAGEMAKER_PROGRAM", "inference.py")
        patch.syspath_prepend(str(model_dir / "code"))  # TorchServe's PYTHONPATH holds /opt/ml/model/code
        patch.setenv("KOE_DEVICE", "cpu")
        patch.setenv("KOE_CPU_THREADS", "2")
        patch.delenv("KOE_MODEL", raising=False)
        yield Service(model_dir)


def test_the_toolkit_loads_the_model_through_code_inference_py(service: Service, model_dir: Path) -> None:
    transformer = service.service._service
    assert transformer._model_fn.__module__ == "koe.handler"
    assert isinstance(transformer._model, Engine)
    assert transformer._model.path == model_dir


def test_raw_audio_to_text(service: Service, jfk: Path) -> None:
    headers = {"Content-Type": "audio/flac", "Accept": "text/plain"}
    status, content_type, body = service.invoke(jfk.read_bytes(), headers)
    assert (status, content_type) == (200, "text/plain; charset=utf-8")
    assert JFK_WORDS in words(body.decode())


def test_multipart_with_fields_to_srt(service: Service, jfk: Path) -> None:
    boundary = "koe-boundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="beam_size"\r\n\r\n1\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="jfk.flac"\r\n'
            "Content-Type: audio/flac\r\n\r\n"
        ).encode()
        + jfk.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {"content-type": f"multipart/form-data; boundary={boundary}", "accept": "application/x-subrip"}
    status, content_type, response = service.invoke(body, headers)
    assert (status, content_type) == (200, "application/x-subrip; charset=utf-8")
    cues = list(srt.parse(response.decode()))
    assert JFK_WORDS in words(" ".join(c.content for c in cues))
    assert [c.start for c in cues] == sorted(c.start for c in cues)


def test_json_with_custom_attributes_to_vtt(service: Service, jfk: Path) -> None:
    payload = json.dumps({"audio": base64.b64encode(jfk.read_bytes()).decode(), "beam_size": 1})
    headers = {
        "Content-Type": "application/json",  # the toolkit hands the body to input_fn as str for this type
        "Accept": "text/vtt",
        "X-Amzn-SageMaker-Custom-Attributes": "word_timestamps=true;temperature=0",
    }
    status, content_type, response = service.invoke(payload.encode(), headers)
    assert (status, content_type) == (200, "text/vtt; charset=utf-8")
    cues = list(webvtt.from_string(response.decode()))
    assert JFK_WORDS in words(" ".join(c.text for c in cues))
    assert all(vtt_seconds(c.end) > vtt_seconds(c.start) for c in cues)


def test_any_accept_gives_verbose_json(service: Service, jfk: Path) -> None:
    headers = {
        "Content-Type": "audio/flac",
        "Accept": "*/*",
        "X-Amzn-SageMaker-Custom-Attributes": "beam_size=1",
    }
    status, content_type, response = service.invoke(jfk.read_bytes(), headers)
    assert (status, content_type) == (200, "application/json")
    body = json.loads(response)
    assert JFK_WORDS in words(body["text"]) and body["segments"]


@pytest.mark.parametrize(
    ("headers", "body", "status", "kind"),
    [
        ({"Content-Type": "audio/wav"}, b"", 400, "empty_input"),
        ({"Content-Type": "audio/wav"}, b"not audio at all" * 50, 400, "undecodable_audio"),
        ({"Content-Type": "audio/wav", "Accept": "image/png"}, b"RIFF", 406, "not_acceptable"),
        ({"Content-Type": "text/csv"}, b"a,b", 415, "unsupported_media_type"),
        (
            {"Content-Type": "audio/wav", "X-Amzn-SageMaker-Custom-Attributes": "colour=blue"},
            b"RIFF",
            422,
            "invalid_option",
        ),
        ({"Content-Type": "application/json"}, b'{"audio": 1}', 400, "invalid_input"),
    ],
    ids=["empty", "undecodable", "accept", "content-type", "attribute", "json"],
)
def test_errors_answer_their_status_and_json_body_without_traceback(
    service: Service, headers: dict[str, str], body: bytes, status: int, kind: str
) -> None:
    got_status, content_type, response = service.invoke(body, headers)
    assert (got_status, content_type) == (status, "application/json")
    error = json.loads(response)["error"]
    assert error["type"] == kind and error["message"]
    assert b"Traceback" not in response


def test_the_model_refusing_an_option_is_422(service: Service, jfk: Path) -> None:
    headers = {"Content-Type": "audio/flac", "X-Amzn-SageMaker-Custom-Attributes": "task=translate"}
    status, _, response = service.invoke(jfk.read_bytes(), headers)
    assert status == 422 and json.loads(response)["error"]["type"] == "invalid_option"


def test_without_a_context_errors_are_raised_as_toolkit_errors_with_koe_status() -> None:
    with pytest.raises(GenericInferenceToolkitError) as info:
        handler.input_fn(b"a,b", "text/csv")
    assert info.value.status_code == 415
    assert json.loads(info.value.message)["error"]["type"] == "unsupported_media_type"


def test_functions_work_directly_without_a_context(engine: Engine, jfk: Path) -> None:
    data = handler.input_fn(jfk.read_bytes(), "audio/flac")
    prediction = handler.predict_fn(data, engine)
    body, content_type = handler.output_fn(prediction, "text/tab-separated-values")
    assert content_type == "text/tab-separated-values; charset=utf-8"
    assert JFK_WORDS in words(body.decode())


def test_each_worker_is_pinned_to_the_gpu_torchserve_assigned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    context = Context(Path("/opt/ml/model"))
    handler.pin_gpu(context)  # gpu_id None: a CPU worker
    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    context.system_properties["gpu_id"] = 1
    handler.pin_gpu(context)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    context.system_properties["gpu_id"] = 0
    handler.pin_gpu(context)  # an explicit choice is kept
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
