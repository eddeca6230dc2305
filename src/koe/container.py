"""The image's entry point: SageMaker starts the container as `docker run IMAGE serve`.

    koe-container serve        (or: python -m koe.container serve)
        Listens on 0.0.0.0 (KOE_HOST overrides) at SAGEMAKER_BIND_TO_PORT, else 8080. The model is KOE_MODEL
        when set; else /opt/ml/model when SageMaker unpacked a model there; else the model baked into the
        image (/opt/koe/model); else /opt/ml/model, and /ping then answers 503 with the reason. Every other
        KOE_* setting applies too (KOE_DEVICE, KOE_COMPUTE_TYPE, KOE_MAX_INPUT_BYTES, ...).
    koe-container bake NAME    (docker build time) copies model NAME into /opt/koe/model.

SIGTERM drains in-flight requests for up to KOE_SHUTDOWN_GRACE_S (25 s; SageMaker kills after 30 s).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from koe.config import Settings
from koe.errors import KoeError
from koe.model_files import is_model_dir, resolve
from koe.shutdown import end

SAGEMAKER_MODEL_DIR = Path("/opt/ml/model")
BAKED_MODEL_DIR = Path("/opt/koe/model")
DEFAULT_PORT = 8080

logger = logging.getLogger("koe.container")


def default_model_dir(sagemaker_dir: Path = SAGEMAKER_MODEL_DIR, baked_dir: Path = BAKED_MODEL_DIR) -> Path:
    """Where the model is when KOE_MODEL is not set: SageMaker's model folder first, then the baked one."""
    if is_model_dir(sagemaker_dir):
        return sagemaker_dir
    if is_model_dir(baked_dir):
        return baked_dir
    return sagemaker_dir


def container_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Settings for the container: KOE_* variables, with SageMaker's port and model folder as defaults."""
    environ = os.environ if environ is None else environ
    settings = Settings.model_validate({})  # reads KOE_* from the environment
    given = settings.model_fields_set
    updates: dict[str, object] = {}
    if "host" not in given:
        updates["host"] = "0.0.0.0"  # a container listens on every interface
    if "allowed_hosts" not in given:
        updates["allowed_hosts"] = ["*"]  # SageMaker's proxy sends its own Host; IAM guards the endpoint
    bind_to = environ.get("SAGEMAKER_BIND_TO_PORT")
    if bind_to:
        if not bind_to.isdigit() or not 0 < int(bind_to) < 65536:
            raise SystemExit(f"SAGEMAKER_BIND_TO_PORT={bind_to!r} is not a port number")
        updates["port"] = int(bind_to)
    elif "port" not in given:
        updates["port"] = DEFAULT_PORT
    if "model" not in given:
        updates["model"] = str(default_model_dir())
    if settings.api_keys:  # IAM guards the container; SageMaker never forwards an Authorization header to it
        logger.warning("KOE_API_KEYS is ignored in the SageMaker container: IAM authenticates InvokeEndpoint")
        updates["api_keys"] = []
    return settings.model_copy(update=updates)


def serve() -> int:
    from koe.api import create_app
    from koe.api.server import run
    from koe.logs import configure_logging

    configure_logging()
    settings = container_settings()
    logger.info("serving model %s on %s:%d", settings.model, settings.host, settings.port)
    end(forced=not run(create_app(settings), settings))
    return 0


def bake(name: str, target: Path = BAKED_MODEL_DIR) -> Path:
    """Copy model `name` (a bundled or hub name, or a folder) into `target`, to bake it into an image."""
    with tempfile.TemporaryDirectory(prefix="koe-bake-") as cache:
        source = resolve(name, Path(cache))
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("code", ".*"))
    return target


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="koe-container", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve /ping and /invocations (what SageMaker runs)")
    baking = commands.add_parser("bake", help="copy a model into the image (docker build time)")
    baking.add_argument("model", help="model name (e.g. large-v3-turbo) or CTranslate2 folder")
    baking.add_argument("--to", type=Path, default=BAKED_MODEL_DIR, help="target folder")
    commands.add_parser("train", help="not supported: this image only serves")
    args = parser.parse_args(argv)
    if args.command == "train":
        print("koe-container: this image serves models; it does not train", file=sys.stderr)
        return 2
    if args.command == "bake":
        try:
            print(bake(args.model, args.to))
        except KoeError as exc:
            print(f"koe-container: {exc.message}", file=sys.stderr)
            return 1
        return 0
    return serve()


if __name__ == "__main__":
    sys.exit(main())
