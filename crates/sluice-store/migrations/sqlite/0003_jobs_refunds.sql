-- Two-phase jobs, refunds, and the ledger kinds they post (SQLite).

-- SQLite cannot alter a CHECK constraint, so the ledger tables are rebuilt.
-- sqlx runs this file in a transaction, where `PRAGMA foreign_keys = OFF` is
-- a no-op; the order below keeps every foreign key valid with them on: the
-- new entry table references the new tx table, the old tables are dropped
-- child first, and renaming the new tx table rewrites the reference to it.
CREATE TABLE ledger_tx_new (
    id              TEXT PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('deposit', 'hold', 'settle', 'release', 'refund_owed',
                                                    'refund_paid', 'refund_to_pool', 'job_paid', 'job_settle')),
    idempotency_key TEXT   NOT NULL UNIQUE,
    created_at      INTEGER NOT NULL
);
INSERT INTO ledger_tx_new (id, kind, idempotency_key, created_at)
    SELECT id, kind, idempotency_key, created_at FROM ledger_tx;

CREATE TABLE ledger_entry_new (
    tx_id       TEXT   NOT NULL REFERENCES ledger_tx_new (id),
    account     TEXT   NOT NULL,
    amount_msat INTEGER NOT NULL CHECK (amount_msat <> 0),
    PRIMARY KEY (tx_id, account)
);
INSERT INTO ledger_entry_new (tx_id, account, amount_msat)
    SELECT tx_id, account, amount_msat FROM ledger_entry;

DROP INDEX ledger_entry_account;
DROP TABLE ledger_entry;
DROP TABLE ledger_tx;
ALTER TABLE ledger_tx_new RENAME TO ledger_tx;
ALTER TABLE ledger_entry_new RENAME TO ledger_entry;
CREATE INDEX ledger_entry_account ON ledger_entry (account);

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    state               TEXT    NOT NULL CHECK (state IN ('awaiting_eval_payment', 'evaluating', 'awaiting_work_payment',
                                                          'rejected', 'executing', 'complete', 'failed')),
    request             TEXT    NOT NULL,
    eval_model          TEXT    NOT NULL,
    work_model          TEXT    NOT NULL,
    eval_hash           TEXT    NOT NULL UNIQUE,
    eval_bolt11         TEXT    NOT NULL,
    eval_amount_msat    INTEGER NOT NULL CHECK (eval_amount_msat >= 0),
    eval_expires_at     INTEGER NOT NULL,
    eval_preimage       TEXT,
    eval_paid_at        INTEGER,
    work_hash           TEXT UNIQUE,
    work_bolt11         TEXT,
    work_amount_msat    INTEGER CHECK (work_amount_msat >= 0),
    work_expires_at     INTEGER,
    work_preimage       TEXT,
    work_paid_at        INTEGER,
    reason              TEXT,
    result              TEXT,
    work_btc_usd_micros INTEGER,
    est_input_tokens    INTEGER,
    est_output_tokens   INTEGER,
    input_tokens        INTEGER,
    output_tokens       INTEGER,
    work_charged_msat   INTEGER CHECK (work_charged_msat >= 0),
    refund_id           TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL
);
CREATE INDEX jobs_state ON jobs (state, created_at);
-- The invoice watcher polls the unpaid invoice of each waiting job.
CREATE INDEX jobs_eval_pending ON jobs (eval_hash) WHERE state = 'awaiting_eval_payment';
CREATE INDEX jobs_work_pending ON jobs (work_hash) WHERE state = 'awaiting_work_payment';

CREATE TABLE refunds (
    id              TEXT PRIMARY KEY,
    owner_kind      TEXT    NOT NULL CHECK (owner_kind IN ('job', 'session')),
    owner_id        TEXT    NOT NULL,
    state           TEXT    NOT NULL CHECK (state IN ('none', 'pending', 'paying', 'claimed', 'expired')),
    amount_msat     INTEGER NOT NULL CHECK (amount_msat >= 0),
    payout_msat     INTEGER NOT NULL CHECK (payout_msat >= 0),
    expires_at      INTEGER NOT NULL,
    payment_hash    TEXT,
    preimage        TEXT,
    lookup_required BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
);
CREATE INDEX refunds_owner ON refunds (owner_kind, owner_id);
-- The expiry sweeper looks for pending refunds past their expiry.
CREATE INDEX refunds_pending ON refunds (expires_at) WHERE state = 'pending';
