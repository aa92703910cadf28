-- sluice schema (SQLite). Amounts are msat, times unix ms, all INTEGER (64-bit signed).

CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    state          TEXT   NOT NULL CHECK (state IN ('awaiting_payment', 'active', 'paused', 'expired')),
    balance_msat   INTEGER NOT NULL DEFAULT 0 CHECK (balance_msat >= 0),
    held_msat      INTEGER NOT NULL DEFAULT 0 CHECK (held_msat >= 0),
    deposited_msat INTEGER NOT NULL DEFAULT 0 CHECK (deposited_msat >= 0),
    spent_msat     INTEGER NOT NULL DEFAULT 0 CHECK (spent_msat >= 0),
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE TABLE invoices (
    payment_hash TEXT PRIMARY KEY,
    bolt11       TEXT   NOT NULL,
    amount_msat  INTEGER NOT NULL CHECK (amount_msat >= 0),
    purpose      TEXT   NOT NULL CHECK (purpose IN ('deposit', 'topup')),
    session_id   TEXT   NOT NULL REFERENCES sessions (id),
    state        TEXT   NOT NULL CHECK (state IN ('pending', 'settled', 'expired')),
    preimage     TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER NOT NULL,
    settled_at   INTEGER
);
CREATE INDEX invoices_session ON invoices (session_id);
-- The invoice watcher polls pending invoices oldest first.
CREATE INDEX invoices_pending ON invoices (created_at, payment_hash) WHERE state = 'pending';

CREATE TABLE requests (
    id                TEXT PRIMARY KEY,
    session_id        TEXT    NOT NULL REFERENCES sessions (id),
    model             TEXT    NOT NULL,
    est_input_tokens  INTEGER  NOT NULL,
    max_output_tokens INTEGER  NOT NULL,
    hold_msat         INTEGER  NOT NULL CHECK (hold_msat >= 0),
    btc_usd_micros    INTEGER  NOT NULL,
    input_tokens      INTEGER,
    output_tokens     INTEGER,
    charged_msat      INTEGER CHECK (charged_msat >= 0),
    uncharged_msat    INTEGER CHECK (uncharged_msat >= 0),
    latency_ms        INTEGER,
    status            TEXT    NOT NULL CHECK (status IN ('held', 'settled', 'client_gone', 'failed', 'abandoned')),
    stream            BOOLEAN NOT NULL,
    instance_id       TEXT    NOT NULL,
    -- JSON array of the spend-cap keys this request's hold is committed under (sorted).
    cap_keys          TEXT    NOT NULL DEFAULT '[]',
    created_at        INTEGER  NOT NULL,
    finished_at       INTEGER
);
CREATE INDEX requests_session ON requests (session_id);
-- Crash reconciliation looks for held requests by gateway instance.
CREATE INDEX requests_held ON requests (instance_id) WHERE status = 'held';

CREATE TABLE spend_caps (
    key            TEXT PRIMARY KEY,
    committed_msat INTEGER NOT NULL CHECK (committed_msat >= 0)
);

CREATE TABLE ledger_tx (
    id              TEXT PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('deposit', 'hold', 'settle', 'release')),
    idempotency_key TEXT   NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL
);

CREATE TABLE ledger_entry (
    tx_id       TEXT   NOT NULL REFERENCES ledger_tx (id),
    account     TEXT   NOT NULL,
    amount_msat INTEGER NOT NULL CHECK (amount_msat <> 0),
    PRIMARY KEY (tx_id, account)
);
CREATE INDEX ledger_entry_account ON ledger_entry (account);

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE gateway_instances (
    id           TEXT PRIMARY KEY,
    heartbeat_at INTEGER NOT NULL
);

CREATE TABLE dev_invoices (
    payment_hash TEXT PRIMARY KEY,
    preimage     TEXT   NOT NULL,
    bolt11       TEXT   NOT NULL,
    amount_msat  INTEGER NOT NULL CHECK (amount_msat >= 0),
    expires_at   INTEGER NOT NULL,
    paid_at      INTEGER
);
