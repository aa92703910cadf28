-- Identity, trust and the free tier (SQLite).

-- SQLite cannot alter a CHECK constraint, so the ledger tables are rebuilt
-- as in 0003 (same order, so every foreign key stays valid).
CREATE TABLE ledger_tx_new (
    id              TEXT PRIMARY KEY,
    kind            TEXT   NOT NULL CHECK (kind IN ('deposit', 'hold', 'settle', 'release', 'refund_owed',
                                                    'refund_paid', 'refund_to_pool', 'job_paid', 'job_settle',
                                                    'pool_seed', 'pool_credit', 'grant')),
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

-- The generosity pool's balance as a row, kept equal to the `pool:generosity`
-- ledger account by every posting that touches it. The CHECK makes a negative
-- pool impossible whatever the code does; grants lock this row.
CREATE TABLE pool (
    id           TEXT PRIMARY KEY,
    balance_msat INTEGER NOT NULL CHECK (balance_msat >= 0)
);
-- Existing databases already hold refund remainders, dust and expired refunds.
INSERT INTO pool (id, balance_msat)
    SELECT 'generosity', COALESCE(SUM(amount_msat), 0) FROM ledger_entry WHERE account = 'pool:generosity';

-- Identities (Nostr public keys) and their trust record.
CREATE TABLE identities (
    pubkey              TEXT PRIMARY KEY,
    score               INTEGER NOT NULL DEFAULT 0 CHECK (score >= 0),
    successes           INTEGER NOT NULL DEFAULT 0 CHECK (successes >= 0),
    failures            INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    paid_msat           INTEGER NOT NULL DEFAULT 0 CHECK (paid_msat >= 0),
    absorbed_msat       INTEGER NOT NULL DEFAULT 0 CHECK (absorbed_msat >= 0),
    absorbed_today_msat INTEGER NOT NULL DEFAULT 0 CHECK (absorbed_today_msat >= 0),
    absorbed_day        INTEGER NOT NULL DEFAULT 0,
    first_seen          INTEGER NOT NULL,
    last_seen           INTEGER NOT NULL
);

-- Login challenge nonces, each usable once.
CREATE TABLE identity_challenges (
    nonce      TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);

-- Signed event ids seen (NIP-98 replay protection) until they expire.
CREATE TABLE seen_events (
    id         TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL
);
CREATE INDEX seen_events_expiry ON seen_events (expires_at);

CREATE TABLE vouches (
    voucher    TEXT   NOT NULL,
    vouchee    TEXT   NOT NULL,
    event_id   TEXT   NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (voucher, vouchee)
);
CREATE INDEX vouches_vouchee ON vouches (vouchee);

-- The audit row of each grant the pool paid (only when it absorbed something).
CREATE TABLE free_grants (
    id             TEXT PRIMARY KEY,
    kind           TEXT   NOT NULL CHECK (kind IN ('chat', 'job', 'demo')),
    pubkey         TEXT,
    tier           TEXT   NOT NULL,
    model          TEXT   NOT NULL,
    requested_msat INTEGER NOT NULL CHECK (requested_msat >= 0),
    absorbed_msat  INTEGER NOT NULL CHECK (absorbed_msat > 0),
    day            INTEGER NOT NULL,
    created_at     INTEGER NOT NULL
);
CREATE INDEX free_grants_day ON free_grants (day);
CREATE INDEX free_grants_pubkey ON free_grants (pubkey);

ALTER TABLE sessions ADD COLUMN pubkey TEXT;
ALTER TABLE requests ADD COLUMN pubkey TEXT;
ALTER TABLE requests ADD COLUMN absorbed_msat INTEGER;
ALTER TABLE jobs ADD COLUMN pubkey TEXT;
ALTER TABLE jobs ADD COLUMN free_tier TEXT CHECK (free_tier IN ('free', 'partial'));
ALTER TABLE jobs ADD COLUMN absorb_cap_msat INTEGER;
ALTER TABLE jobs ADD COLUMN absorbed_msat INTEGER;
ALTER TABLE jobs ADD COLUMN grant_tier TEXT;
ALTER TABLE jobs ADD COLUMN grant_allowance_msat INTEGER;
