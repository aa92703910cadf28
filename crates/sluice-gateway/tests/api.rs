//! Black-box tests of the gateway's HTTP API: real servers on port 0, a real
//! SQLite (and PostgreSQL) store, the real dev wallet, and a fake OpenAI
//! upstream that is a real HTTP server with a scripted "model".
#![allow(
    clippy::disallowed_methods,
    reason = "fakes and fixtures run on bare tasks; the gateway itself runs on `TestApp::clock`"
)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api {
    mod estimates;
    mod failures;
    mod free_tier;
    pub mod helpers;
    mod holes;
    mod identity;
    mod jobs;
    mod l402;
    mod lnbits;
    mod openapi;
    mod paid_path;
    mod refunds;
    mod upstreams;
    mod validation;
}
