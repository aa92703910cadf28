//! The SQL of each per-domain store trait, one file a domain.

pub(crate) mod holds;
pub(crate) mod identities;
pub(crate) mod jobs;
pub(crate) mod kv;
pub(crate) mod ops;
pub(crate) mod pool;
pub(crate) mod refunds;
pub(crate) mod sessions;
