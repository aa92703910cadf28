-- Identity, trust and the free tier (PostgreSQL).

ALTER TABLE ledger_tx DROP CONSTRAINT IF EXISTS ledger_tx_kind_check;
ALTER TABLE ledger_tx ADD CONSTRAINT ledger_tx_kind_check CHECK (kind IN ('deposit', 'hold', 'settle', 'release',
    'refund_owed', 'refund_paid', 'refund_to_pool', 'job_paid', 'job_settle', 'pool_seed', 'pool_credit', 'grant'));

-- The generosity pool's balance as a row, kept equal to the `pool:generosity`
-- ledger account by every posting that touches it. The CHECK makes a negative
-- pool impossible whatever the code does; grants lock this row.
CREATE TABLE pool (
    id           TEXT PRIMARY KEY,
    balance_msat BIGINT NOT NULL CHECK (balance_msat >= 0)
);
-- Existing databases already hold refund remainders, dust and expired refunds.
INSERT INTO pool (id, balance_msat)
    SELECT 'generosity', COALESCE(SUM(amount_msat), 0) FROM ledger_entry WHERE account = 'pool:generosity';

-- Identities (Nostr public keys) and their trust record.
CREATE TABLE identities (
    pubkey              TEXT PRIMARY KEY,
    score               BIGINT NOT NULL DEFAULT 0 CHECK (score >= 0),
    successes           BIGINT NOT NULL DEFAULT 0 CHECK (successes >= 0),
    failures            BIGINT NOT NULL DEFAULT 0 CHECK (failures >= 0),
    paid_msat           BIGINT NOT NULL DEFAULT 0 CHECK (paid_msat >= 0),
    absorbed_msat       BIGINT NOT NULL DEFAULT 0 CHECK (absorbed_msat >= 0),
    absorbed_today_msat BIGINT NOT NULL DEFAULT 0 CHECK (absorbed_today_msat >= 0),
    absorbed_day        BIGINT NOT NULL DEFAULT 0,
    first_seen          BIGINT NOT NULL,
    last_seen           BIGINT NOT NULL
);

-- Login challenge nonces, each usable once.
CREATE TABLE identity_challenges (
    nonce      TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);

-- Signed event ids seen (NIP-98 replay protection) until they expire.
CREATE TABLE seen_events (
    id         TEXT PRIMARY KEY,
    expires_at BIGINT NOT NULL
);
CREATE INDEX seen_events_expiry ON seen_events (expires_at);

CREATE TABLE vouches (
    voucher    TEXT   NOT NULL,
    vouchee    TEXT   NOT NULL,
    event_id   TEXT   NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
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
    requested_msat BIGINT NOT NULL CHECK (requested_msat >= 0),
    absorbed_msat  BIGINT NOT NULL CHECK (absorbed_msat > 0),
    day            BIGINT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX free_grants_day ON free_grants (day);
CREATE INDEX free_grants_pubkey ON free_grants (pubkey);

ALTER TABLE sessions ADD COLUMN pubkey TEXT;
ALTER TABLE requests ADD COLUMN pubkey TEXT;
ALTER TABLE requests ADD COLUMN absorbed_msat BIGINT;
ALTER TABLE jobs ADD COLUMN pubkey TEXT;
ALTER TABLE jobs ADD COLUMN free_tier TEXT CHECK (free_tier IN ('free', 'partial'));
ALTER TABLE jobs ADD COLUMN absorb_cap_msat BIGINT;
ALTER TABLE jobs ADD COLUMN absorbed_msat BIGINT;
ALTER TABLE jobs ADD COLUMN grant_tier TEXT;
ALTER TABLE jobs ADD COLUMN grant_allowance_msat BIGINT;
