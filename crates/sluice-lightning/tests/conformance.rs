//! One conformance suite for the Lightning port, run against every backend:
//! the generic checks live in `conformance/suite.rs` and are expanded per
//! backend by [`lightning_conformance!`]; backend-specific tests sit next to
//! each backend's fixture.
//!
//! LND and Core Lightning are tested against sample-response fakes
//! (modules `lnd_sample_fake`, `cln_sample_fake`; samples and their
//! sources in `conformance/samples/`): no LND or CLN binary runs here.
//!
//! LNbits tests need a running LNbits: `scripts/lnbits.sh start`, then load
//! the env file it prints (`SLUICE_TEST_LNBITS_URL`,
//! `SLUICE_TEST_LNBITS_ADMIN_TOKEN`). Without them those tests fail.
#![allow(
    clippy::disallowed_methods,
    reason = "fakes run on bare tasks and fixtures use fresh random hashes"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "conformance/suite.rs"]
#[macro_use]
mod suite;

#[path = "conformance/dev.rs"]
mod dev;

#[path = "conformance/lnbits.rs"]
mod lnbits;

#[path = "conformance/sample_fake.rs"]
mod sample_fake;

#[path = "conformance/lnd.rs"]
mod lnd_sample_fake;

#[path = "conformance/cln.rs"]
mod cln_sample_fake;
