//! What a chat request would cost, without paying: its price, the most it
//! may cost itemized, and what the free tier would decide for an identity.

use sluice_core::{Itemized, TokenUsage};
use sluice_store::GrantKind;

use crate::{
    ServiceError, Sluice,
    free::{FreeDecision, decide_for_pubkey},
    pricing::{Priced, price},
    request::ChatBody,
};

/// A request priced, unpaid.
pub struct Quoted<'a> {
    /// The price, as a paid request would be held for.
    pub priced: Priced<'a>,
    /// The most it may cost, itemized.
    pub at_max: Itemized,
    /// The free tier's decision, for an identity.
    pub free: Option<FreeDecision>,
}

impl Sluice {
    /// Price `body` for `pubkey` (if an identity was presented) without paying.
    pub async fn quote(
        &self,
        body: &ChatBody,
        pubkey: Option<&str>,
    ) -> Result<Quoted<'_>, ServiceError> {
        let priced = price(self, body).await?;
        let free = match pubkey {
            Some(pk) => Some(
                decide_for_pubkey(
                    self,
                    pk,
                    priced.hold.hold,
                    &priced.model.name,
                    GrantKind::Chat,
                )
                .await?,
            ),
            None => None,
        };
        let at_max = sluice_core::itemize(
            &priced.model.rates,
            TokenUsage {
                input: priced.input_held,
                output: priced.max_out,
            },
            priced.btc,
        )
        .map_err(|e| ServiceError::internal(&e))?;
        Ok(Quoted {
            priced,
            at_max,
            free,
        })
    }
}
