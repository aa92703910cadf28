-- Two-phase jobs, refunds, and the ledger kinds they post (PostgreSQL).

-- The column CHECK of 0001 got PostgreSQL's generated name ledger_tx_kind_check.
ALTER TABLE ledger_tx DROP CONSTRAINT IF EXISTS ledger_tx_kind_check;
ALTER TABLE ledger_tx ADD CONSTRAINT ledger_tx_kind_check CHECK (kind IN ('deposit', 'hold', 'settle', 'release',
    'refund_owed', 'refund_paid', 'refund_to_pool', 'job_paid', 'job_settle'));

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    state               TEXT    NOT NULL CHECK (state IN ('awaiting_eval_payment', 'evaluating', 'awaiting_work_payment',
                                                          'rejected', 'executing', 'complete', 'failed')),
    request             TEXT    NOT NULL,
    eval_model          TEXT    NOT NULL,
    work_model          TEXT    NOT NULL,
    eval_hash           TEXT    NOT NULL UNIQUE,
    eval_bolt11         TEXT    NOT NULL,
    eval_amount_msat    BIGINT NOT NULL CHECK (eval_amount_msat >= 0),
    eval_expires_at     BIGINT NOT NULL,
    eval_preimage       TEXT,
    eval_paid_at        BIGINT,
    work_hash           TEXT UNIQUE,
    work_bolt11         TEXT,
    work_amount_msat    BIGINT CHECK (work_amount_msat >= 0),
    work_expires_at     BIGINT,
    work_preimage       TEXT,
    work_paid_at        BIGINT,
    reason              TEXT,
    result              TEXT,
    work_btc_usd_micros BIGINT,
    est_input_tokens    BIGINT,
    est_output_tokens   BIGINT,
    input_tokens        BIGINT,
    output_tokens       BIGINT,
    work_charged_msat   BIGINT CHECK (work_charged_msat >= 0),
    refund_id           TEXT,
    attempts            BIGINT NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
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
    amount_msat     BIGINT NOT NULL CHECK (amount_msat >= 0),
    payout_msat     BIGINT NOT NULL CHECK (payout_msat >= 0),
    expires_at      BIGINT NOT NULL,
    payment_hash    TEXT,
    preimage        TEXT,
    lookup_required BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX refunds_owner ON refunds (owner_kind, owner_id);
-- The expiry sweeper looks for pending refunds past their expiry.
CREATE INDEX refunds_pending ON refunds (expires_at) WHERE state = 'pending';
