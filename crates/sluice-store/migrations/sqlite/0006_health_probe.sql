-- The health check's write: a counter, so every probe changes a row (a
-- no-op update may write nothing, and so succeed on a database that refuses writes).
CREATE TABLE health_probe (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    beats BIGINT NOT NULL
);
