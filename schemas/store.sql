-- shadowdiff store, schema version 1. One DuckDB file per run writer.
-- {segments_type} and {features_type} are STRUCT types built from the run config's declared
-- segment fields and features (typed columns: 3x faster to insert and scan than JSON text).
-- Every row is keyed by its source coordinates, so a restart or a repeated replay inserts
-- nothing twice (INSERT OR IGNORE).

CREATE TABLE IF NOT EXISTS run_meta (
    key   VARCHAR PRIMARY KEY,
    value JSON NOT NULL
);

CREATE TABLE IF NOT EXISTS requests (
    source          VARCHAR   NOT NULL,  -- Kafka topic, or file path
    part            INTEGER   NOT NULL,  -- Kafka partition (0 for files)
    "offset"        BIGINT    NOT NULL,  -- Kafka offset, or line/row number
    request_id      VARCHAR   NOT NULL,
    event_time      TIMESTAMPTZ NOT NULL,
    sampled_reason  VARCHAR   NOT NULL,  -- 'rate' (hash below the rate) or 'quota' (segment minimum)
    segments        {segments_type},
    features        {features_type},
    model_input     VARCHAR,             -- JSON text of the payload the models received (written by
                                         -- orjson or DuckDB's JSON writer, valid by construction;
                                         -- VARCHAR skips DuckDB's re-validation, which halves
                                         -- insert speed)
    feature_version VARCHAR,             -- feature pipeline that built the input
    PRIMARY KEY (source, part, "offset")
);

CREATE TABLE IF NOT EXISTS outputs (
    source          VARCHAR   NOT NULL,
    part            INTEGER   NOT NULL,
    "offset"        BIGINT    NOT NULL,
    variant         VARCHAR   NOT NULL,  -- 'baseline', 'baseline_repeat', 'candidate:<name>'
    model_version   VARCHAR,
    score           DOUBLE,              -- numeric primary output, where there is one
    label           VARCHAR,             -- class label, where there is one
    output          VARCHAR,             -- JSON text of the whole output
    latency_ms      DOUBLE,
    error_class     VARCHAR,             -- NULL when the call succeeded; see schemas.records.ErrorClass
    error_detail    VARCHAR,
    attempts        INTEGER   NOT NULL,
    called_at       TIMESTAMPTZ          -- when the shadow sent the batch's calls (wall clock); NULL
                                         -- for answers recorded in production (live envelopes)
    -- no index of its own: outputs are inserted only with a request row newly inserted in the
    -- same transaction (INSERT OR IGNORE ... RETURNING), so (source, part, offset, variant) is
    -- unique by construction, and a second ART index would halve the insert rate
);

-- The hash of each request stored for a quota, per quota it entered (replay/sampling.py): the
-- judge keeps, per quota segment, the requests with the k smallest hashes of all.
CREATE TABLE IF NOT EXISTS quota_samples (
    source      VARCHAR   NOT NULL,
    part        INTEGER   NOT NULL,
    "offset"    BIGINT    NOT NULL,
    quota       VARCHAR   NOT NULL,      -- 'field=value'
    sample_hash UBIGINT   NOT NULL,
    PRIMARY KEY (source, part, "offset", quota)
);

CREATE TABLE IF NOT EXISTS dead_letters (
    source      VARCHAR   NOT NULL,
    part        INTEGER   NOT NULL,
    "offset"    BIGINT    NOT NULL,
    reason      VARCHAR   NOT NULL,      -- see schemas.records.DeadLetterReason
    detail      VARCHAR   NOT NULL,
    raw_key     BLOB,
    raw_value   BLOB,                    -- truncated to 64 KiB for oversized messages
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source, part, "offset")
);

-- Next offset to read per partition, written in the same transaction as the rows: a restart
-- resumes here even when the Kafka commit after the DuckDB commit was lost.
CREATE TABLE IF NOT EXISTS checkpoints (
    source      VARCHAR NOT NULL,
    part        INTEGER NOT NULL,
    next_offset BIGINT  NOT NULL,
    consumed    BIGINT  NOT NULL,        -- messages read, sampled or not
    sampled     BIGINT  NOT NULL,
    PRIMARY KEY (source, part)
);
