-- Closing the money holes found by the audit (issue "Close every hole where a sat leaks").

-- Sessions get their own `closed` state. SQLite cannot alter a CHECK constraint,
-- so the table is rebuilt; invoices and requests reference it, so the foreign
-- keys are checked at commit, after the rows are back under the same name.
PRAGMA defer_foreign_keys = ON;
CREATE TEMP TABLE sessions_old AS SELECT * FROM sessions;
DROP TABLE sessions;
CREATE TABLE sessions (
    id             TEXT PRIMARY KEY,
    state          TEXT   NOT NULL CHECK (state IN ('awaiting_payment', 'active', 'paused', 'expired', 'closed')),
    balance_msat   INTEGER NOT NULL DEFAULT 0 CHECK (balance_msat >= 0),
    held_msat      INTEGER NOT NULL DEFAULT 0 CHECK (held_msat >= 0),
    deposited_msat INTEGER NOT NULL DEFAULT 0 CHECK (deposited_msat >= 0),
    spent_msat     INTEGER NOT NULL DEFAULT 0 CHECK (spent_msat >= 0),
    created_at     INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL,
    pubkey         TEXT
);
INSERT INTO sessions (id, state, balance_msat, held_msat, deposited_msat, spent_msat, created_at, expires_at,
                      updated_at, pubkey)
    SELECT id, state, balance_msat, held_msat, deposited_msat, spent_msat, created_at, expires_at, updated_at, pubkey
    FROM sessions_old;
DROP TABLE sessions_old;

-- Every hold has a deadline: any process releases a hold still open past it.
ALTER TABLE requests ADD COLUMN deadline_at INTEGER;
CREATE INDEX requests_held_deadline ON requests (deadline_at) WHERE status = 'held';

-- Jobs belong to the gateway process running their phase, and a job invoice
-- the backend reports expired unpaid is looked up no more.
ALTER TABLE jobs ADD COLUMN instance_id TEXT;
ALTER TABLE jobs ADD COLUMN invoice_dead_at INTEGER;

-- After a payout the backend reported failed, the same invoice is retried
-- until it expires (`failed_hash`, `retry_until`: the claimed invoice's expiry); the
-- amount the claim invoice is for (`claimed_msat`, at most the payout: the rest is the
-- claimant's routing-fee budget) and the fee the payout spent (`fee_msat`) are kept.
ALTER TABLE refunds ADD COLUMN failed_hash TEXT;
ALTER TABLE refunds ADD COLUMN retry_until INTEGER;
ALTER TABLE refunds ADD COLUMN fee_msat INTEGER CHECK (fee_msat >= 0);
ALTER TABLE refunds ADD COLUMN claimed_msat INTEGER CHECK (claimed_msat >= 0);

-- The dev wallet has two sides: the gateway's invoices and the customer's.
ALTER TABLE dev_invoices ADD COLUMN issuer TEXT NOT NULL DEFAULT 'gateway' CHECK (issuer IN ('gateway', 'customer'));

-- Trust is earned over distinct days of paying.
ALTER TABLE identities ADD COLUMN paid_days INTEGER NOT NULL DEFAULT 0 CHECK (paid_days >= 0);
ALTER TABLE identities ADD COLUMN last_paid_day INTEGER;

-- A payment proves at most one refund: no two refunds may be paid (or be
-- paying) to the same invoice.
CREATE UNIQUE INDEX refunds_payment_hash ON refunds (payment_hash);
