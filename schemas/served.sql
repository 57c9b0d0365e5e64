-- shadowdiff served-traffic store, schema version 1. One DuckDB file per served worker
-- (`served-<worker>.duckdb` in the run folder): the inference-log records of a canary analysis
-- or a rollback verification (schemas/served.py). Every row is keyed by its source coordinates,
-- so a restart or a re-read inserts nothing twice (INSERT OR IGNORE).

CREATE TABLE IF NOT EXISTS run_meta (
    key   VARCHAR PRIMARY KEY,
    value JSON NOT NULL
);

CREATE TABLE IF NOT EXISTS served (
    source      VARCHAR     NOT NULL,  -- Kafka topic, or file path
    part        INTEGER     NOT NULL,
    "offset"    BIGINT      NOT NULL,
    request_id  VARCHAR,               -- the serving request's id, when logged
    version     VARCHAR     NOT NULL,  -- the model version that answered
    event_time  TIMESTAMPTZ NOT NULL,  -- when it answered
    latency_ms  DOUBLE,                -- how long it took (null: not logged)
    status      VARCHAR     NOT NULL,  -- as logged ("ok", "error", "timeout", ...)
    ok          BOOLEAN     NOT NULL,  -- status is one of the config's ok_status
    segments    JSON        NOT NULL,  -- {segment field: value as text or null}
    input       JSON,                  -- the request's features, as logged
    score       DOUBLE,                -- the answer's score, read by the run's [output]
    label       VARCHAR,               -- the answer's label, as text
    received_at TIMESTAMPTZ NOT NULL,  -- when this worker stored it
    PRIMARY KEY (source, part, "offset")
);

CREATE TABLE IF NOT EXISTS dead_letters (
    source      VARCHAR   NOT NULL,
    part        INTEGER   NOT NULL,
    "offset"    BIGINT    NOT NULL,
    reason      VARCHAR   NOT NULL,      -- see schemas.records.DeadLetterReason
    detail      VARCHAR   NOT NULL,
    raw_key     BLOB,
    raw_value   BLOB,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source, part, "offset")
);

-- Next offset to read per partition, written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS checkpoints (
    source      VARCHAR NOT NULL,
    part        INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    consumed    BIGINT  NOT NULL,        -- records read
    sampled     BIGINT  NOT NULL,        -- records stored (the rest are dead letters)
    PRIMARY KEY (source, part)
);
