"""Run config: what to read, how to sample, which models to call, what to store.

Loaded from TOML, validated once at the edge (CLI) into frozen models and passed down.
Errors name the key and what was expected, e.g. `source.topic: field required`.
"""

from __future__ import annotations

import re
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    SerializationInfo,
    ValidationError,
    field_serializer,
    model_validator,
)

from shadowdiff.schemas.errors import ConfigError


class _Frozen(BaseModel):
    # strict: `rate = "0.5"` or `batch_size = "64"` is an error, not a silent conversion; the
    # fields that TOML can only give as text (paths, times, secrets) say so themselves
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


Text = Field(strict=False)  # a Path, a datetime or a secret, read from TOML text


class SharedSpec(_Frozen):
    """Where the workers' checkpoint exports are shared when the workers and the judge do not
    share a disk: an S3 bucket and prefix (AWS S3, MinIO, Ceph...). Credentials never go here:
    they come from the environment or the standard AWS chain (AWS_ACCESS_KEY_ID, profiles,
    instance roles)."""

    url: Annotated[str, Field(pattern=r"^s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?$")]
    endpoint_url: str | None = None  # an S3-compatible server; default: AWS (or AWS_ENDPOINT_URL)
    region: str | None = None

    @model_validator(mode="after")
    def _no_credentials(self) -> SharedSpec:
        if self.endpoint_url and urlsplit(self.endpoint_url).password is not None:
            raise ValueError("no credentials in the config: give them in the environment or the AWS chain")
        return self


class RunSection(_Frozen):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    home: Annotated[Path, Text] = Path("shadowdiff-runs")
    worker: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "w0"
    # a stored batch closes at `batch_size` sampled requests, 20x that many messages read, or
    # `batch_timeout_ms` after its first message, whichever comes first
    batch_size: Annotated[int, Field(ge=1, le=100_000)] = 2000
    batch_timeout_ms: Annotated[int, Field(ge=1, le=60_000)] = 500
    progress_every_s: Annotated[float, Field(gt=0)] = 15.0  # a progress line (consumed, rate, lag) this often
    # the checkpoint exports copied to an object store too, for a judge on another machine
    shared: SharedSpec | None = None


class FileSource(_Frozen):
    kind: Literal["file"]
    path: Annotated[Path, Text]
    max_message_bytes: Annotated[int, Field(ge=64)] = 1 << 20


class KafkaSource(_Frozen):
    kind: Literal["kafka-live", "kafka-window"]
    bootstrap: Annotated[str, Field(min_length=3)]
    topic: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,249}$")]
    group: str | None = None
    start: Annotated[datetime | None, Text] = None  # window start (inclusive), needs a timezone
    end: Annotated[datetime | None, Text] = None  # window end (exclusive)
    max_message_bytes: Annotated[int, Field(ge=64)] = 1 << 20
    progress: bool = True
    # the consumer: kafka-python (pure Python) or librdkafka (confluent-kafka, C); the same
    # behaviour, librdkafka leaves the replay's main thread free (docs/performance.md)
    client: Literal["kafka-python", "librdkafka"] = "kafka-python"

    @model_validator(mode="after")
    def _window(self) -> KafkaSource:
        if self.kind == "kafka-window":
            if self.start is None or self.end is None:
                raise ValueError("kafka-window needs both `start` and `end`")
            if self.start.tzinfo is None or self.end.tzinfo is None:
                raise ValueError("`start` and `end` need a timezone, e.g. 2026-11-25T00:00:00Z")
            if self.end <= self.start:
                raise ValueError("`end` must be after `start`")
        if self.kind == "kafka-live" and not self.group:
            raise ValueError("kafka-live needs `group` (workers in one group share partitions)")
        return self


class SchemaRegistrySpec(_Frozen):
    """A Confluent-compatible schema registry (Confluent, Apicurio's ccompat API, Karapace) that
    the writers' serializers registered the schemas with. Credentials never go here: the names
    of the environment variables that hold them do."""

    url: Annotated[str, Field(pattern=r"^https?://")]
    username_env: str | None = None  # e.g. "SCHEMA_REGISTRY_USER"
    password_env: str | None = None

    @model_validator(mode="after")
    def _no_credentials(self) -> SchemaRegistrySpec:
        if urlsplit(self.url).password is not None or urlsplit(self.url).username is not None:
            raise ValueError("no credentials in the config: name the environment variables that hold them")
        return self


class MessageFormat(_Frozen):
    """How a topic's messages are encoded: "json"; or "avro" / "protobuf" with either a schema
    registry (the Confluent wire format: a zero byte, a 4-byte schema id, for Protobuf the
    message indexes, then the binary) or a schema file kept with the config, each message then
    being the binary alone: an Avro writer schema (.avsc), or for Protobuf a descriptor set
    (`protoc --include_imports --descriptor_set_out=FILE`) and `message_type`, the full name of
    the message every record is. One codec reads every topic the run reads (replay/formats.py)."""

    format: Literal["json", "avro", "protobuf"] = "json"
    schema_registry: SchemaRegistrySpec | None = None
    schema_file: Annotated[Path | None, Text] = None
    message_type: str | None = None

    @model_validator(mode="after")
    def _one_schema_source(self) -> MessageFormat:
        given = (self.schema_registry is not None) + (self.schema_file is not None)
        if self.format != "json" and given != 1:
            raise ValueError(f"format {self.format!r} needs one of schema_registry (Confluent wire format) or schema_file")
        if self.format == "json" and given:
            raise ValueError("schema_registry and schema_file are for format 'avro' or 'protobuf'")
        if self.format == "protobuf" and self.schema_file is not None and not self.message_type:
            raise ValueError("a Protobuf schema_file needs message_type, the full name of the record's message")
        if self.message_type is not None and (self.format != "protobuf" or self.schema_file is None):
            # the wire format's message indexes name the message; a second name could disagree
            raise ValueError("message_type is for format 'protobuf' with a schema_file")
        return self


class EnvelopeMapping(MessageFormat):
    """How request messages are encoded (`MessageFormat`) and where each envelope field lives in
    them (dotted paths), so existing topics are read as they are."""

    request_id: str = "request_id"
    event_time: str = "event_time"
    segments: str = "segments"  # an object of segment fields; '' = top level
    input: str = "input"
    live_output: str = "output"
    live_latency_ms: str = "latency_ms"
    model_version: str = "model_version"
    feature_version: str = "feature_version"


class OutcomeSpec(MessageFormat):
    """Where the truth arrives: outcome records (a topic, a window or a recording), each naming
    the request it resolves and what was observed. `label`: the observed class (compared with
    the models' labels); `value`: the observed number (regression; or 0/1 for a probability
    score); at least one of the two. `positive_label`: the class a probability score is the
    probability of, when the outcome is a label. `observed_at`: when the outcome happened; ''
    takes the message's timestamp."""

    source: Annotated[FileSource | KafkaSource, Field(discriminator="kind")]
    request_id: str = "request_id"
    label: str = ""
    value: str = ""
    observed_at: str = "observed_at"
    positive_label: str = "1"

    @model_validator(mode="after")
    def _something_observed(self) -> OutcomeSpec:
        if not self.label and not self.value:
            raise ValueError("outcomes need `label` (the observed class) or `value` (the observed number), or both")
        return self


class ServedSpec(MessageFormat):
    """Where the served traffic is logged: inference-log records, one per request a serving
    instance answered (stable and canary alike; schemas/served.py documents the record), on a
    topic, a window of it or a recording. Each field is a dotted path in the record; `version`
    may instead be `header:<name>`, a Kafka header the serving proxy sets. `ok_status`: the
    statuses that count as answered without error (anything else is an error)."""

    source: Annotated[FileSource | KafkaSource, Field(discriminator="kind")]
    request_id: str = "request_id"
    version: str = "model_version"
    event_time: str = "event_time"
    latency_ms: str = "latency_ms"
    status: str = "status"
    ok_status: Annotated[list[str], Field(min_length=1)] = ["ok"]
    segments: str = "segments"  # an object of segment fields; '' = top level
    input: str = "input"
    output: str = "output"


class SideSpec(_Frozen):
    """One side of a comparison of served traffic: a model version, and for a rollback's
    last-known-good its time window (`start` inclusive, `end` exclusive)."""

    version: Annotated[str, Field(min_length=1, max_length=200)]
    start: Annotated[datetime | None, Text] = None
    end: Annotated[datetime | None, Text] = None

    @model_validator(mode="after")
    def _window(self) -> SideSpec:
        for name, t in (("start", self.start), ("end", self.end)):
            if t is not None and t.tzinfo is None:
                raise ValueError(f"`{name}` needs a timezone, e.g. 2026-11-25T00:00:00Z")
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError("`end` must be after `start`")
        return self


class CompareSpec(_Frozen):
    """What a run of served traffic compares, unpaired: `mode = "canary"` the canary's traffic
    (`subject`) with the stable's (`reference`) over the same time; `mode = "rollback"` the
    service's traffic since the rollback (`subject`) with a last-known-good window of the same
    version (`reference`, e.g. the same hours a week before), to answer whether it is restored.
    `name`: what the gate calls the answer (default: the subject's version)."""

    mode: Literal["canary", "rollback"]
    reference: SideSpec
    subject: SideSpec
    name: Annotated[str | None, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None

    @model_validator(mode="after")
    def _sides(self) -> CompareSpec:
        if self.mode == "canary" and self.reference.version == self.subject.version:
            raise ValueError("a canary compares two versions: `reference.version` and `subject.version` are the same")
        if self.mode == "rollback":
            if self.reference.start is None or self.reference.end is None:
                raise ValueError("a rollback's last-known-good (`reference`) needs its window: `start` and `end`")
            if self.subject.start is None:
                raise ValueError("a rollback's current traffic (`subject`) needs `start`: when the rollback completed")
            if self.subject.start < self.reference.end:
                raise ValueError("the current window (`subject.start`) must begin after the last-known-good one ends")
        return self

    def answer_name(self) -> str:
        """The name the verdict and the gate give this comparison."""
        if self.name:
            return self.name
        cleaned = re.sub(r"[^A-Za-z0-9._-]", "-", self.subject.version)[:64]
        return cleaned if self.mode == "canary" else f"restored-{cleaned}"[:64]


class FeatureSpec(_Frozen):
    numeric: list[str] = []
    categorical: list[str] = []


class HourBuckets(_Frozen):
    """A derived segment from the event hour (UTC), e.g. night = hours 0-5."""

    name: str = "daypart"
    buckets: dict[str, list[Annotated[int, Field(ge=0, le=23)]]] = {
        "night": [0, 1, 2, 3, 4, 5],
        "morning": [6, 7, 8, 9, 10, 11],
        "afternoon": [12, 13, 14, 15, 16, 17],
        "evening": [18, 19, 20, 21, 22, 23],
    }


class SegmentSpec(_Frozen):
    fields: list[str] = []
    allowed: dict[str, list[str]] = {}  # field -> known values; others are dead-lettered
    hour_buckets: HourBuckets | None = None
    combinations: list[list[str]] = []

    def names(self) -> list[str]:
        out = list(self.fields)
        if self.hour_buckets is not None:
            out.append(self.hour_buckets.name)
        return out


class SamplingSpec(_Frozen):
    rate: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # 'request_id' | 'kafka_key' | 'header:<name>' | 'field:<dotted.path>'
    key: Annotated[str, Field(pattern=r"^(request_id|kafka_key|header:.+|field:.+)$")] = "request_id"
    salt: str = "shadowdiff"
    quotas: dict[str, Annotated[int, Field(ge=1)]] = {}  # "field=value" -> minimum samples
    # every value of every segment field (the hour bucket included) sampled at least this many
    # times, by the same bottom-k quotas: "policy" takes the policy's min_samples, so that each
    # segment the traffic has can reach its minimum; 0 = off. With it on, every message is
    # decoded to learn its segments (a segment's value is unknown until then).
    min_per_segment: Annotated[int, Field(ge=0)] | Literal["policy"] = 0

    def per_segment_k(self, policy_min_samples: int) -> int:
        """The bottom-k size every segment value gets (0: none)."""
        return policy_min_samples if self.min_per_segment == "policy" else self.min_per_segment


class OutputSpec(_Frozen):
    """How to read a model output: the numeric score and/or label inside it."""

    kind: Literal["score", "label", "ranking", "json"] = "score"
    score_path: str = ""  # dotted path to a number ('' = the output itself, if a number); ranking: the list
    label_path: str = ""
    threshold: float | None = None  # derives a label from the score when no label is given
    probabilities_path: str = ""  # class probabilities (list or {class: p}): Jensen-Shannon distance
    top_k: int = 10  # ranking: overlap@k
    ignore_fields: list[str] = []  # json: fields whose differences do not count (timestamps, trace ids)


REDACTED = "***"
REVEAL_SECRETS = "reveal_secrets"  # serialization context key: only for handing a spec to a call process


def redact_url(url: str | None) -> str | None:
    """The URL with any user name and password replaced by ***."""
    if not url:
        return url
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{REDACTED}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def header_problem(name: str, value: str) -> str | None:
    """Why HTTP/1.1 cannot carry this header, naming it but never showing its value (headers
    are secrets); None when it can. A header is one line of Latin-1: a line break would add a
    header of its own."""
    if not name or ":" in name or not (name + value).isprintable():
        return f"header {name!r}: an empty name, a colon in the name, a line break or a control character"
    try:
        (name + value).encode("latin-1")
    except UnicodeEncodeError:
        return f"header {name!r}: HTTP headers carry Latin-1 text only"
    return None


def default_rows_per_call(kind: str) -> int:
    """Rows a call of this kind carries unless `batch_size` says otherwise."""
    return {"python": 256, "mlflow": 512, "oip-v2": 512}.get(kind, 1)


class ModelSpec(_Frozen):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
    kind: Literal["http", "oip-v2", "mlflow", "python"]
    url: str | None = None
    target: str | None = None  # python: 'module:function', called with a list of inputs
    model_version: str | None = None
    feature_version: str | None = None  # the feature pipeline version the model was built for
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 2.0
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    backoff_s: Annotated[float, Field(ge=0, le=60)] = 0.05
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 32  # calls in flight at most
    # HTTP kinds: the calls in flight follow the model (AIMD: one more while answers come in
    # time and at the unloaded pace, x0.9 at a timeout, a 429/503 or twice the unloaded
    # latency), between 1 and `concurrency`; false keeps `concurrency` calls in flight
    adaptive_concurrency: bool = True
    # HTTP kinds: calls per second at most, so shadow traffic never takes a shared server
    # past what its owners allow; None = no cap
    max_rps: Annotated[float, Field(gt=0)] | None = None
    # rows per call; default 512 for the protocols that carry many rows (mlflow, oip-v2: their
    # servers' cost is mostly per call, see bench/server_bench.py), 1 for plain http (any server
    # takes one row), 256 for python callables
    batch_size: Annotated[int, Field(ge=1, le=100_000)] | None = None
    # oip-v2: how rows travel. "columns": one tensor per feature, with the request-level
    # `parameters.content_type = "pd"` that tells MLServer to read them as one DataFrame (its
    # default codec refuses several tensors); "tensor": one [n, k] FP64 tensor of `oip_features`
    # in that order (KServe's and Triton's scikit-learn and ONNX models)
    oip_request: Literal["columns", "tensor"] = "columns"
    oip_features: list[str] = []
    # oip_request = "tensor": the input tensor's name and type as the server declares them
    # (Triton checks both against the model's config.pbtxt: e.g. "input__0", TYPE_FP32)
    oip_tensor_name: Annotated[str, Field(min_length=1, max_length=256)] = "input-0"
    oip_tensor_datatype: Literal["FP64", "FP32"] = "FP64"
    # how this model's answers are read (score, label, class probabilities); default: the run's
    # [output]. A baseline and a candidate on different serving stacks answer differently
    output: OutputSpec | None = None
    breaker_failures: Annotated[int, Field(ge=1)] = 20  # consecutive failures that open it
    breaker_reset_s: Annotated[float, Field(gt=0)] = 5.0
    # http kind: the request body is {request_field: input}; the output is at response_path
    request_field: str = ""  # '' = send the input object itself
    # http: dotted path in the JSON answer, '' = the whole answer; oip-v2: the output tensor's
    # name, asked for in the request (`outputs`), '' = the server's default output
    response_path: str = ""
    # secrets: shown and stored as "***" everywhere (config dumps, run metadata, verdicts,
    # reports, evidence); only the model clients read them (`header_values`, `call_url`)
    headers: dict[str, Annotated[SecretStr, Text]] = {}
    # python kind: what the function gets, the inputs as a list of dicts or the declared
    # features as a pyarrow Table (vectorised models score it without a loop per row)
    input: Literal["records", "table"] = "records"
    # HTTP kinds: make the calls from a child process, which has its own GIL (the replay's
    # process is busy with Kafka reads and DuckDB hand-offs); false keeps them on the replay's
    # event loop
    call_process: bool = True

    @field_serializer("headers")
    def _dump_headers(self, headers: dict[str, SecretStr], info: SerializationInfo) -> dict[str, str]:
        reveal = bool(info.context and info.context.get(REVEAL_SECRETS))
        return {k: (v.get_secret_value() if reveal else REDACTED) for k, v in headers.items()}

    @field_serializer("url")
    def _dump_url(self, url: str | None, info: SerializationInfo) -> str | None:
        return url if info.context and info.context.get(REVEAL_SECRETS) else redact_url(url)

    def header_values(self) -> dict[str, str]:
        return {k: v.get_secret_value() for k, v in self.headers.items()}

    @property
    def rows_per_call(self) -> int:
        if self.batch_size is not None:
            return self.batch_size
        return default_rows_per_call(self.kind)

    @model_validator(mode="after")
    def _target(self) -> ModelSpec:
        if self.url and urlsplit(self.url).username is not None and any(k.lower() == "authorization" for k in self.headers):
            raise ValueError("give credentials either in the URL or in an Authorization header, not both")
        for name, value in self.header_values().items():
            # refused here, before a replay starts (the model client refuses it too, later)
            if (problem := header_problem(name, value)) is not None:
                raise ValueError(problem)
        if self.oip_request == "tensor" and not self.oip_features:
            raise ValueError("`oip_request = 'tensor'` needs `oip_features`: the input fields, in the model's column order")
        if self.input == "table" and self.kind != "python":
            raise ValueError("`input = 'table'` is for python models; HTTP models get the input object")
        if self.kind == "python":
            if not self.target or ":" not in self.target:
                raise ValueError("python models need `target = 'module:function'`")
        elif not self.url or not self.url.startswith(("http://", "https://")):
            raise ValueError(f"{self.kind} models need `url` starting with http:// or https://")
        return self


class BaselineSpec(_Frozen):
    kind: Literal["live", "model"] = "live"
    model: ModelSpec | None = None
    repeat: bool = False  # call the baseline model twice: the second call measures the noise floor

    @model_validator(mode="after")
    def _model(self) -> BaselineSpec:
        if self.kind == "model" and self.model is None:
            raise ValueError("baseline kind 'model' needs a [baseline.model] table")
        if self.repeat and self.model is None:
            raise ValueError("`repeat` needs a baseline model to call twice")
        return self


class RunConfig(_Frozen):
    run: RunSection
    source: Annotated[FileSource | KafkaSource, Field(discriminator="kind")]
    envelope: EnvelopeMapping = EnvelopeMapping()
    features: FeatureSpec = FeatureSpec()
    segments: SegmentSpec = SegmentSpec()
    sampling: SamplingSpec = SamplingSpec()
    baseline: BaselineSpec = BaselineSpec()
    candidates: Annotated[list[ModelSpec], Field(min_length=1)]
    output: OutputSpec = OutputSpec()
    outcomes: OutcomeSpec | None = None  # the truth that arrives later (`shadowdiff outcomes`)

    @model_validator(mode="after")
    def _model_outputs(self) -> RunConfig:
        models = [*self.candidates, *([self.baseline.model] if self.baseline.model else [])]
        for m in models:
            if m.output is not None and m.output.kind != self.output.kind:
                raise ValueError(
                    f"model {m.name}: output.kind {m.output.kind!r} differs from the run's {self.output.kind!r} "
                    "(a model's own output mapping changes where its answers are read, not what they are)"
                )
        return self

    def output_of(self, model: ModelSpec | None) -> OutputSpec:
        """How a model's answers are read: its own mapping, else the run's."""
        return model.output if model is not None and model.output is not None else self.output

    @model_validator(mode="after")
    def _names(self) -> RunConfig:
        names = [c.name for c in self.candidates]
        if len(set(names)) != len(names):
            raise ValueError(f"candidate names must be unique, got {names}")
        known = set(self.segments.names())
        for q in self.sampling.quotas:
            field, sep, _ = q.partition("=")
            if not sep or field not in known:
                raise ValueError(f"sampling quota {q!r} must be 'segment=value' with a segment in {sorted(known)}")
        for combo in self.segments.combinations:
            unknown = set(combo) - known
            if unknown:
                raise ValueError(f"segment combination {combo} names unknown segments {sorted(unknown)}")
        models = [*self.candidates, *([self.baseline.model] if self.baseline.model else [])]
        if any(m.input == "table" for m in models) and not (self.features.numeric or self.features.categorical):
            raise ValueError("a model with `input = 'table'` gets the declared features: declare [features]")
        return self


class ServedRunConfig(_Frozen):
    """A run over served traffic (`shadowdiff canary`): a canary analysis or a rollback
    verification. No models are called: the answers are those the serving instances logged."""

    run: RunSection
    served: ServedSpec
    compare: CompareSpec
    features: FeatureSpec = FeatureSpec()
    segments: SegmentSpec = SegmentSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _supported(self) -> ServedRunConfig:
        if self.output.kind not in ("score", "label"):
            raise ValueError(f"output.kind {self.output.kind!r}: served traffic is compared on scores and labels")
        if self.segments.hour_buckets is not None or self.segments.combinations:
            raise ValueError(
                "served traffic is segmented by `segments.fields` (hour buckets and combinations are for shadow runs)"
            )
        return self


def format_validation_error(err: ValidationError) -> list[str]:
    """`key.path: message` lines, one per problem."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "tagged-union")))
        lines.append(f"{loc or '<root>'}: {e['msg']}")
    return lines


def parse_config(data: dict[str, Any], origin: str = "run config") -> RunConfig:
    """Validate a config mapping. Raises ConfigError naming each bad key."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(origin, format_validation_error(err)) from err


def read_toml(path: Path) -> dict[str, Any]:
    """A TOML file's contents; ConfigError when it is missing or not TOML."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ConfigError(str(path), ["file not found"]) from err
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), [f"not valid TOML: {err}"]) from err


def load_config(path: Path) -> RunConfig:
    """Read and validate a TOML run config. Relative paths are resolved against its folder."""
    cfg = parse_config(read_toml(path), origin=str(path))
    base = path.parent.resolve()
    updates: dict[str, Any] = {}
    if not cfg.run.home.is_absolute():
        updates["run"] = cfg.run.model_copy(update={"home": base / cfg.run.home})
    if isinstance(cfg.source, FileSource) and not cfg.source.path.is_absolute():
        updates["source"] = cfg.source.model_copy(update={"path": base / cfg.source.path})
    if cfg.envelope.schema_file is not None and not cfg.envelope.schema_file.is_absolute():
        updates["envelope"] = cfg.envelope.model_copy(update={"schema_file": base / cfg.envelope.schema_file})
    if cfg.outcomes is not None:
        updates["outcomes"] = _resolved(cfg.outcomes, base)
    return cfg.model_copy(update=updates) if updates else cfg


def _resolved(spec: OutcomeSpec | ServedSpec, base: Path) -> Any:
    """A topic section with its recording and schema file resolved against `base`."""
    changes: dict[str, Any] = {}
    if isinstance(spec.source, FileSource) and not spec.source.path.is_absolute():
        changes["source"] = spec.source.model_copy(update={"path": base / spec.source.path})
    if spec.schema_file is not None and not spec.schema_file.is_absolute():
        changes["schema_file"] = base / spec.schema_file
    return spec.model_copy(update=changes) if changes else spec


def load_served_config(path: Path) -> ServedRunConfig:
    """Read and validate a served-traffic run config (`shadowdiff canary`); relative paths are
    resolved against its folder."""
    try:
        cfg = ServedRunConfig.model_validate(read_toml(path))
    except ValidationError as err:
        raise ConfigError(str(path), format_validation_error(err)) from err
    base = path.parent.resolve()
    updates: dict[str, Any] = {}
    if not cfg.run.home.is_absolute():
        updates["run"] = cfg.run.model_copy(update={"home": base / cfg.run.home})
    updates["served"] = _resolved(cfg.served, base)
    return cfg.model_copy(update=updates)
