"""`DeploySpec`: what `koe deploy` should leave in AWS, and the exact SageMaker shapes derived from it.

Names of the model and the endpoint config are content-addressed: `<name>-<10 hex digits>`, the digits a
hash of everything that goes into the resource. Deploying the same spec again finds those names and changes
nothing; a changed spec gives new names, so the endpoint is updated to a new config and the old ones are
swept after.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from koe import __version__
from koe.errors import OptionsError

if TYPE_CHECKING:
    from koe.deploy.autoscaling import WarmHours

MAX_NAME = 52  # SageMaker names are at most 63 characters; "-" and a 10-digit hash follow ours.
NAME_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")
HASH_LEN = 10
TOPIC_RE = re.compile(r"^arn:aws[a-z\-]*:sns:[a-z0-9\-]*:[0-9]{12}:[a-zA-Z0-9_.-]+$")
ROLE_RE = re.compile(r"^arn:aws[a-z\-]*:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
KMS_RE = re.compile(r"^[a-zA-Z0-9:/_-]{1,2048}$")  # AsyncInferenceOutputConfig.KmsKeyId / KmsKeyId patterns
# SageMaker hosting families koe runs on: GPU (g*, p*: CUDA) and CPU (c*, m*, r*, t*: small models, where a CPU
# instance costs less than an idle GPU). Inferentia / Trainium (inf*, trn*) need a Neuron build: not supported.
GPU_FAMILIES = ("g", "p")
CPU_FAMILIES = ("c", "m", "r", "t")
MAX_INVOCATION_TIMEOUT_S = 3600  # InvokeEndpointAsync's InvocationTimeoutSeconds: 1..3600, AWS default 900
# Until a measured --throughput is given, the audio limit is derived from a deliberately low speed (audio
# seconds per second of processing), so that the longest accepted file still finishes within the timeout.
ASSUMED_SPEED = {"gpu": 4.0, "cpu": 1.0}
CONTAINER_MAX_AUDIO_S = 4 * 3600  # koe's own default (Settings.max_duration_s)

DEFAULT_INSTANCE_TYPE = "ml.g4dn.xlarge"
DEFAULT_VARIANT = "AllTraffic"
# The default SageMaker GPU driver for async endpoints on g4dn/g5 is 470 (CUDA 11.4): too old for koe's CUDA
# 12 image. al2-ami-sagemaker-inference-gpu-3-1 has driver 550 (CUDA 12.4) and is what AWS's own CUDA 12.8
# WhisperX image pins (deep-learning-containers test_utils/constants.py INFERENCE_AMI_VERSION_CU12).
DEFAULT_AMI_VERSION = "al2-ami-sagemaker-inference-gpu-3-1"
AMI_VERSIONS = (
    "al2-ami-sagemaker-inference-gpu-2",  # driver 535, CUDA 12.2
    "al2-ami-sagemaker-inference-gpu-2-1",  # 535 / 12.2, CUDA compat mounting disabled
    "al2-ami-sagemaker-inference-gpu-3-1",  # 550 / 12.4, compat mounting disabled
    "al2023-ami-sagemaker-inference-gpu-4-1",  # 580 / 13.0, compat mounting disabled
)
# Models that fit the recipe's users (faster-whisper/CTranslate2 conversions on the Hugging Face Hub, downloaded
# where `koe deploy` / `koe package` runs, once, at package time). Sizes and cited speeds: docs/deploy.md.
MODEL_CHOICES = {
    "large-v3-turbo": "mobiuslabsgmbh/faster-whisper-large-v3-turbo",  # multilingual, 4 decoder layers
    "distil-large-v3": "Systran/faster-distil-whisper-large-v3",  # English
    "kotoba-tech/kotoba-whisper-v2.0-faster": "kotoba-tech/kotoba-whisper-v2.0-faster",  # Japanese
}
MODEL_DIR = "/opt/ml/model"
BAKED = "image"  # --model image: the model baked into the image (docker build --build-arg BAKE_MODEL=...)
TAG_KEY = "koe:endpoint"


@dataclass(frozen=True)
class DeploySpec:
    """The desired state of one koe endpoint. Validated on construction (OptionsError names the field).

    Attributes:
        name: endpoint name; also the stem of the model and endpoint config names.
        image_uri: the container image (`koe image --push` prints it).
        model: an `s3://.../model.tar.gz` URL used as is; a model name / folder that `koe.deploy.package` packs
            and uploads under `s3://<bucket>/<prefix>/model/`; or "image" for an image with the model baked in.
        role_arn: the SageMaker execution role (`koe iam-policy --create-role` makes one).
        bucket, prefix: where model data, inputs, outputs and failures live
            (`<prefix>/{model,input,output,failure}`).
        instance_type: a GPU type (ml.g4dn.xlarge, one T4, is the cheapest that fits large-v3), or a CPU type
            (ml.c*/ml.m*) for small models.
        min_instances: the autoscaling floor (0: scale to zero; 1+: a warm floor that never cold-starts).
        max_instances: the autoscaling ceiling.
        max_concurrent_invocations: async requests one instance takes at a time (more lets koe batch them).
        success_topic, error_topic: SNS topic ARNs notified per request (optional).
        target_backlog_per_instance: target tracking's target for ApproximateBacklogSizePerInstance.
        ami_version: the InferenceAmiVersion, i.e. the host GPU driver (see DEFAULT_AMI_VERSION); GPU types only.
        invocation_timeout_s: the InvocationTimeoutSeconds `koe invoke` sends (AWS's default is 900 s); the
            container's audio limit (KOE_MAX_DURATION_S) is derived from it and the throughput.
        throughput: measured speed of one instance, audio seconds per second (e.g. 40 = 40x real time).
        kms_key: a KMS key (id or ARN) for the async outputs and the instance's storage volume.
        warm_hours, timezone, warm_instances: scheduled warm hours ("Mon-Fri 09:00-18:00" in an IANA time zone)
            during which at least `warm_instances` run.
        alarm_topic: SNS topic ARN told when requests fail, expire, or wait longer than
            `oldest_request_alarm_s` (the alarms exist either way; `koe status` shows them).
        expire_inputs_days: an S3 lifecycle rule deleting uploaded inputs (`<prefix>/input/`) after N days.
        startup_timeout_s: ContainerStartupHealthCheckTimeoutInSeconds: from container start to a 200 on
            /ping, which includes loading the model onto the GPU.
        download_timeout_s: ModelDataDownloadTimeoutInSeconds: fetching and unpacking model.tar.gz.
        environment: extra container environment, after koe's own (KOE_MODEL, KOE_DEVICE, KOE_BATCH_SIZE).
    """

    name: str
    image_uri: str
    model: str
    role_arn: str
    bucket: str
    prefix: str = ""
    instance_type: str = DEFAULT_INSTANCE_TYPE
    max_instances: int = 1
    min_instances: int = 0
    max_concurrent_invocations: int = 0  # 0: the batch size (16 by default), so one batch of requests shares it
    success_topic: str | None = None
    error_topic: str | None = None
    target_backlog_per_instance: float = 5.0
    ami_version: str = DEFAULT_AMI_VERSION
    startup_timeout_s: int = 900
    download_timeout_s: int = 1200
    batch_size: int | None = None
    invocation_timeout_s: int = MAX_INVOCATION_TIMEOUT_S
    throughput: float | None = None
    kms_key: str | None = None
    warm_hours: str | None = None
    timezone: str = "UTC"
    warm_instances: int = 1
    alarm_topic: str | None = None
    oldest_request_alarm_s: int = 600  # --max-wait's default, 10 min
    expire_inputs_days: int | None = None
    variant: str = DEFAULT_VARIANT
    environment: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", (self.prefix or f"koe/{self.name}").strip("/"))
        if not self.max_concurrent_invocations:
            object.__setattr__(self, "max_concurrent_invocations", self.batch_size or 16)
        check_name(self.name)
        _check(bool(self.image_uri), "image_uri", "is required (koe image --push prints one)")
        _check(bool(self.model), "model", "is required")
        _check(bool(ROLE_RE.match(self.role_arn)), "role_arn", f"{self.role_arn!r} is not an IAM role ARN")
        _check(bool(BUCKET_RE.match(self.bucket)), "bucket", f"{self.bucket!r} is not an S3 bucket name")
        instance_family(self.instance_type)
        _check(1 <= self.max_instances <= 100, "max_instances", "must be between 1 and 100")
        _check(0 <= self.min_instances <= self.max_instances, "min_instances", "must be 0..max_instances")
        _check(1 <= self.invocation_timeout_s <= MAX_INVOCATION_TIMEOUT_S, "invocation_timeout_s", "must be 1..3600")
        _check(self.throughput is None or self.throughput > 0, "throughput", "must be positive")
        _check(self.kms_key is None or bool(KMS_RE.match(self.kms_key)), "kms_key", "is not a KMS key id or ARN")
        _check(1 <= self.max_concurrent_invocations <= 1000, "max_concurrent_invocations", "must be 1..1000")
        _check(self.target_backlog_per_instance > 0, "target_backlog_per_instance", "must be positive")
        _check(self.ami_version in AMI_VERSIONS, "ami_version", f"must be one of {', '.join(AMI_VERSIONS)}")
        _check(60 <= self.startup_timeout_s <= 3600, "startup_timeout_s", "must be 60..3600 seconds")
        _check(60 <= self.download_timeout_s <= 3600, "download_timeout_s", "must be 60..3600 seconds")
        _check(self.batch_size is None or 1 <= self.batch_size <= 256, "batch_size", "must be 1..256")
        _check(self.max_instances >= self.warm_instances >= 1, "warm_instances", "must be 1..max_instances")
        _check(60 <= self.oldest_request_alarm_s <= 21600, "oldest_request_alarm_s", "must be 60..21600 seconds")
        _check(self.expire_inputs_days is None or self.expire_inputs_days >= 1, "expire_inputs_days", "must be >= 1")
        if self.warm_hours is not None:
            self.warm  # noqa: B018 (parses and validates)
        topics = (("success_topic", self.success_topic), ("error_topic", self.error_topic),
                  ("alarm_topic", self.alarm_topic))  # fmt: skip
        for label, topic in topics:
            _check(topic is None or bool(TOPIC_RE.match(topic)), label, f"{topic!r} is not an SNS topic ARN")

    # ---- locations -----------------------------------------------------------------------------------------

    @property
    def root(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def output_path(self) -> str:
        return f"{self.root}/output"

    @property
    def failure_path(self) -> str:
        return f"{self.root}/failure"

    @property
    def baked(self) -> bool:
        """True when the image carries the model: no ModelDataUrl, nothing to download at start-up."""
        return self.model == BAKED

    @property
    def packaged(self) -> bool:
        """True when koe packs and uploads the model; False for a given s3:// URL or a baked model."""
        return not (self.baked or self.model.startswith("s3://"))

    @property
    def model_data_url(self) -> str | None:
        if self.baked:
            return None
        if not self.packaged:
            return self.model
        slug = re.sub(r"[^a-zA-Z0-9._-]+", "-", Path(self.model).name or "model").strip("-") or "model"
        return f"{self.root}/model/{slug}-{model_source_digest(self.model)}/model.tar.gz"

    # ---- SageMaker shapes ----------------------------------------------------------------------------------

    @property
    def warm(self) -> WarmHours | None:
        from koe.deploy.autoscaling import WarmHours  # not at import: the CLI imports spec without boto3

        return WarmHours.parse(self.warm_hours, self.timezone) if self.warm_hours else None

    @property
    def gpu(self) -> bool:
        return instance_family(self.instance_type) == "gpu"

    @property
    def max_audio_s(self) -> int:
        """The longest audio the container accepts: what one instance finishes within the invocation timeout
        (at the measured throughput, else at a deliberately low assumed speed), at most koe's 4 h default."""
        speed = self.throughput or ASSUMED_SPEED[instance_family(self.instance_type)]
        return int(min(CONTAINER_MAX_AUDIO_S, self.invocation_timeout_s * speed))

    def model_environment(self) -> dict[str, str]:
        env = {"KOE_DEVICE": "cuda" if self.gpu else "cpu", "KOE_MAX_DURATION_S": str(self.max_audio_s)}
        if not self.baked:  # a baked image finds its own model (/opt/koe/model) when KOE_MODEL is unset
            env["KOE_MODEL"] = MODEL_DIR
        if self.batch_size is not None:
            env["KOE_BATCH_SIZE"] = str(self.batch_size)
        env.update(dict(self.environment))
        return env

    @property
    def model_name(self) -> str:
        parts = {"image": self.image_uri, "data": self.model_data_url, "env": self.model_environment(),
                 "role": self.role_arn}  # fmt: skip
        return f"{self.name}-{digest(parts)}"

    def variant_config(self) -> dict[str, Any]:
        variant: dict[str, Any] = {
            "VariantName": self.variant,
            "ModelName": self.model_name,
            "InitialInstanceCount": max(1, self.min_instances),
            "InstanceType": self.instance_type,
            "ContainerStartupHealthCheckTimeoutInSeconds": self.startup_timeout_s,
            "ModelDataDownloadTimeoutInSeconds": self.download_timeout_s,
        }
        if self.gpu:  # the AMI picks the host's GPU driver; CPU hosts have none to pick
            variant["InferenceAmiVersion"] = self.ami_version
        return variant

    def async_config(self) -> dict[str, Any]:
        output: dict[str, Any] = {"S3OutputPath": self.output_path, "S3FailurePath": self.failure_path}
        if self.kms_key:
            output["KmsKeyId"] = self.kms_key
        notify = {k: v for k, v in (("SuccessTopic", self.success_topic), ("ErrorTopic", self.error_topic)) if v}
        if notify:
            output["NotificationConfig"] = notify
        return {
            "ClientConfig": {"MaxConcurrentInvocationsPerInstance": self.max_concurrent_invocations},
            "OutputConfig": output,
        }

    @property
    def volume_kms_key(self) -> str | None:
        """CreateEndpointConfig's KmsKeyId (the ML storage volume), where AWS accepts one. AWS rejects it for
        instance types with local NVMe storage (every GPU family koe uses, and c5d/m5d/...), whose instance
        store is encrypted by the hardware."""
        if not self.kms_key or self.gpu or re.match(r"^ml\.[a-z]+\d[a-z-]*d[a-z-]*\.", self.instance_type):
            return None
        return self.kms_key

    @property
    def config_name(self) -> str:
        parts = {"variant": self.variant_config(), "async": self.async_config(), "kms": self.volume_kms_key}
        return f"{self.name}-{digest(parts)}"

    @property
    def tags(self) -> dict[str, str]:
        return {TAG_KEY: self.name}


def instance_family(instance_type: str) -> str:
    """Whether a SageMaker hosting instance type (`ml.<family><generation>.<size>`) is "gpu" or "cpu"."""
    match = re.match(r"^ml\.([a-z]+)\d[a-z0-9-]*\.[a-z0-9]+$", instance_type)
    family = match.group(1) if match else ""
    if family[:1] in GPU_FAMILIES:
        return "gpu"
    if family[:1] in CPU_FAMILIES:
        return "cpu"
    raise OptionsError(
        f"instance_type: {instance_type!r} is not a SageMaker GPU (ml.g*/ml.p*) or CPU (ml.c*/ml.m*/ml.r*/ml.t*) type"
    )


def check_name(name: str) -> str:
    _check(bool(NAME_RE.match(name)), "name", f"{name!r}: use letters, digits and single hyphens")
    _check(len(name) <= MAX_NAME, "name", f"{name!r} is longer than {MAX_NAME} characters")
    return name


def owned_names(name: str, candidates: list[str]) -> list[str]:
    """The names among `candidates` that koe derived for endpoint `name` (`<name>-<10 hex>`)."""
    pattern = re.compile(rf"^{re.escape(name)}-[0-9a-f]{{{HASH_LEN}}}$")
    return sorted(c for c in candidates if pattern.match(c))


def digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def model_source_digest(model: str) -> str:
    """A hash of what the packaged archive would contain: the model source and koe's version (its code/).

    For a local folder or archive the file names, sizes and modification times count, so an edited model is
    packed and uploaded again; for a model name the name is enough.
    """
    path = Path(model).expanduser()
    files: list[tuple[str, int, int]] = []
    if path.is_file():
        stat = path.stat()
        files.append((path.name, stat.st_size, stat.st_mtime_ns))
    elif path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = item.stat()
            files.append((str(item.relative_to(path)), stat.st_size, stat.st_mtime_ns))
    return digest({"model": model, "files": files, "koe": __version__})


def parse_environment(pairs: list[str] | tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """`["KEY=VALUE", ...]` from the command line into environment pairs."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise OptionsError(f"environment: {pair!r} is not KEY=VALUE")
        env[key] = value
    return tuple(env.items())


def split_s3_root(output_path: str) -> tuple[str, str]:
    """(bucket, prefix) from an endpoint config's S3OutputPath `s3://bucket/prefix/output`."""
    without = output_path.removeprefix("s3://").rstrip("/")
    bucket, _, key = without.partition("/")
    prefix = key.rsplit("/", 1)[0] if "/" in key else ""
    return bucket, prefix


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise OptionsError(f"{field_name}: {message}")


def mapping_matches(desired: Any, current: Any) -> bool:
    """True when every key/value in `desired` is equal in `current` (extra keys in `current` are ignored)."""
    if isinstance(desired, Mapping):
        return isinstance(current, Mapping) and all(
            k in current and mapping_matches(v, current[k]) for k, v in desired.items()
        )
    if isinstance(desired, list | tuple):
        return (
            isinstance(current, list | tuple)
            and len(desired) == len(current)
            and all(mapping_matches(d, c) for d, c in zip(desired, current, strict=True))
        )
    if isinstance(desired, float | int) and isinstance(current, float | int):
        return float(desired) == float(current)
    return bool(desired == current)
