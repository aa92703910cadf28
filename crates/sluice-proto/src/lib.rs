//! placeholder
pub mod macaroon;
