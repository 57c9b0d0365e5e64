-- shadowdiff outcome store, schema version 1. One DuckDB file per outcome worker
-- (`outcomes-<worker>.duckdb` beside the run's stores). Every row is keyed by its source
-- coordinates, so a restart or a re-read inserts nothing twice (INSERT OR IGNORE); the same
-- request resolved twice is two rows, and the judge counts the first (schemas/outcomes.py).

CREATE TABLE IF NOT EXISTS run_meta (
    key   VARCHAR PRIMARY KEY,
    value JSON NOT NULL
);

CREATE TABLE IF NOT EXISTS outcomes (
    source      VARCHAR     NOT NULL,  -- Kafka topic, or file path
    part        INTEGER     NOT NULL,
    "offset"    BIGINT      NOT NULL,
    request_id  VARCHAR     NOT NULL,  -- the request it resolves (the pairs' request_id)
    label       VARCHAR,               -- the observed class, as the models' labels are stored (text)
    value       DOUBLE,                -- the observed number
    observed_at TIMESTAMPTZ NOT NULL,  -- when the outcome happened (its delay is from the request's event time)
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
    sampled     BIGINT  NOT NULL,        -- records stored as outcomes (the rest are dead letters)
    PRIMARY KEY (source, part)
);
