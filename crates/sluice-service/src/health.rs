//! Whether the service can take money now: the database accepts a write, the
//! Lightning backend answers, the BTC price is fresh.

use sluice_lightning::{LightningError, PaymentHash};

use crate::{Sluice, oracle::PriceStatus};

/// One round of checks.
#[derive(Debug, Clone)]
pub struct HealthReport {
    /// The database's dialect (`sqlite`, `postgres`).
    pub dialect: &'static str,
    /// The database accepted a write.
    pub database_ok: bool,
    /// The Lightning backend's name.
    pub backend: &'static str,
    /// The backend answered a look-up.
    pub lightning_ok: bool,
    /// The price in use, and whether it is stale.
    pub price: PriceStatus,
    /// Whether the backend moves real money.
    pub real_money: bool,
}

impl HealthReport {
    /// A dependency that money needs is down: paid requests could not be recorded.
    pub fn is_down(&self) -> bool {
        !self.database_ok || !self.lightning_ok
    }
}

impl Sluice {
    /// Check the database (a write), the Lightning backend (a look-up of an
    /// invoice nobody has: any answer shows it is there) and the price.
    pub async fn health(&self) -> HealthReport {
        let database_ok = match self.store.ping().await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "health check: the database refused a write");
                false
            }
        };
        let mut probe = [0u8; 32];
        self.ids.fill(&mut probe);
        let lightning_ok = match self.lightning.lookup_invoice(&PaymentHash(probe)).await {
            Ok(_) | Err(LightningError::NotFound) => true,
            Err(e) => {
                tracing::error!(error = %e, "health check: the Lightning backend did not answer");
                false
            }
        };
        HealthReport {
            dialect: self.store.dialect(),
            database_ok,
            backend: self.lightning.name(),
            lightning_ok,
            price: self.oracle.status(),
            real_money: self.lightning.is_real_money(),
        }
    }
}
