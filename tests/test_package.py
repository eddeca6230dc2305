"""`koe package` builds a SageMaker model.tar.gz, and the container entry serves it end to end over HTTP."""

from __future__ import annotations

import tarfile
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from koe.cli import app
from koe.deploy.package import WEIGHT_PACKAGES, build_model_archive, runtime_requirements
from koe.model_files import resolve
from support.serving import JFK_WORDS, free_port, python_command, server_process, wait_ready, words


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    return build_model_archive("tiny.en", tmp_path_factory.mktemp("pkg") / "model.tar.gz", cache_dir)


def test_archive_layout_is_what_sagemaker_expects(archive: Path, cache_dir: Path) -> None:
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        inference = tar.extractfile("code/inference.py").read().decode()  # type: ignore[union-attr]
        requirements = tar.extractfile("code/requirements.txt").read().decode()  # type: ignore[union-attr]
        sizes = {m.name: m.size for m in tar.getmembers()}
    model_dir = resolve("tiny.en", cache_dir)
    assert {"model.bin", "config.json", "tokenizer.json"} <= set(names)  # at the root, not in a folder
    assert not any(n.startswith(("./", "/")) or ".." in n.split("/") for n in names)
    assert "code/koe/handler.py" in names and "code/koe/engine.py" in names
    assert not any("__pycache__" in n for n in names)
    for name in ("model.bin", "config.json", "tokenizer.json"):
        assert sizes[name] == (model_dir / name).stat().st_size
    assert "from koe.handler import input_fn, model_fn, output_fn, predict_fn" in inference
    lines = requirements.split()
    assert lines == runtime_requirements()
    assert any(line.startswith("faster-whisper==") for line in lines)
    assert any(line.startswith("ctranslate2==") for line in lines)
    assert all("==" in line for line in lines)
    assert not any(line.split("==")[0] in WEIGHT_PACKAGES for line in lines)


def test_package_command_writes_the_archive(tmp_path: Path) -> None:
    model = tmp_path / "my-model"  # a CTranslate2 folder (stand-in files: packaging does not load them)
    model.mkdir()
    for name in ("model.bin", "config.json", "vocabulary.json"):
        (model / name).write_text("{}")
    output = tmp_path / "out" / "model.tar.gz"
    args = ["package", "--model", str(model), "--output", str(output), "--no-source"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with tarfile.open(output) as tar:
        names = tar.getnames()
    assert {"model.bin", "config.json", "vocabulary.json", "code/inference.py"} <= set(names)
    assert not any(n.startswith("code/koe/") for n in names)
    assert not list(output.parent.glob(".*partial"))


def test_package_command_reports_an_unknown_model(tmp_path: Path) -> None:
    args = ["package", "--model", "no-such-model", "--output", str(tmp_path / "m.tgz")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown model" in result.output
    assert not (tmp_path / "m.tgz").exists()


def test_unpacked_archive_served_by_the_container_entry(archive: Path, tmp_path: Path) -> None:
    """What SageMaker does: unpack model.tar.gz into /opt/ml/model, run `IMAGE serve`, ping, invoke."""
    opt_ml_model = tmp_path / "opt" / "ml" / "model"
    opt_ml_model.mkdir(parents=True)
    with tarfile.open(archive) as tar:
        tar.extractall(opt_ml_model, filter="data")
    port = free_port()
    env = {
        "KOE_MODEL": str(opt_ml_model),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "KOE_HOST": "127.0.0.1",
        "KOE_DEVICE": "cpu",
        "KOE_CPU_THREADS": "2",
    }
    command = python_command("-m", "koe.container", "serve")
    with server_process(command, env, port, tmp_path / "container.log") as (url, process):
        seen = wait_ready(url, process=process)
        assert 200 in seen
        jfk = Path(__file__).resolve().parents[2] / "shared" / "audio" / "en" / "jfk.flac"
        response = httpx.post(
            f"{url}/invocations",
            content=jfk.read_bytes(),
            headers={
                "Content-Type": "audio/flac",
                "Accept": "text/plain",
                "X-Amzn-SageMaker-Custom-Attributes": "beam_size=1",
            },
            timeout=120,
        )
        assert response.status_code == 200, response.text
        assert JFK_WORDS in words(response.text)
        error = httpx.post(f"{url}/invocations", content=b"x", headers={"Content-Type": "text/plain"})
        assert error.status_code == 415 and error.json()["error"]["type"] == "unsupported_media_type"
    log = (tmp_path / "container.log").read_text()
    assert f"serving model {opt_ml_model}" in log
