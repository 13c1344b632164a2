//! Global limits on a standby: requests spend tokens its worker leased from the primary's bucket
//! (`token_leases`, `worker::leases`), with no round trip unless the tokens run out. On the
//! primary a global limit is an ordinary bucket of the limiter, which the standbys' tokens are
//! taken out of (`ledger`).

use pg_apikey_core::errors::ApiError;
use pg_apikey_core::token_leases::{self, Receipt, TokenSpend};

use crate::shmem::now_us;
use crate::shmem::regions::Attempt;

/// One global limit to spend from: its bucket's hash, the limit's name, the key (of the bucket's
/// owner) that asks, the cost, and how a refusal names it.
pub struct Token<'a> {
    pub hash: u64,
    pub name: &'a str,
    pub key_id: i64,
    pub cost: i64,
    pub what: &'a str,
}

/// How long a request waits for its worker to lease tokens from the primary.
const WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Spend every token, all or nothing (what was spent before a refusal goes back). The receipts
/// are for [`refund`].
pub fn spend(tokens: &[Token]) -> Result<Vec<Receipt>, ApiError> {
    let mut receipts = Vec::with_capacity(tokens.len());
    for t in tokens {
        match spend_one(t) {
            Ok(r) => receipts.push(r),
            Err(e) => {
                refund(tokens, &receipts);
                return Err(e);
            }
        }
    }
    Ok(receipts)
}

/// Give back what this very call spent, when another of its limits refused it: each token to
/// the grant it came from, if that is still live (never a later one).
pub fn refund(tokens: &[Token], receipts: &[Receipt]) {
    let db = crate::shmem::database();
    let Ok(region) = crate::credits::available() else {
        return;
    };
    let now = now_us();
    region.credits(|p| {
        for (t, r) in tokens.iter().zip(receipts) {
            token_leases::refund(&mut p.tokens, db, t.hash, r, now);
        }
    });
}

fn spend_one(t: &Token) -> Result<Receipt, ApiError> {
    let db = crate::shmem::database();
    let region = crate::credits::available()?;
    region
        .wait_for_worker(WAIT, |ask| {
            let spent = region
                .credits(|p| {
                    token_leases::spend(
                        &mut p.tokens,
                        db,
                        t.hash,
                        t.key_id,
                        t.name,
                        t.cost,
                        now_us(),
                        ask,
                    )
                })
                .unwrap_or(TokenSpend::Full);
            match spent {
                TokenSpend::Spent(low, receipt) => {
                    if low {
                        region.wake_worker();
                    }
                    Attempt::Done(Ok(receipt))
                }
                TokenSpend::Refused(wait_us) => {
                    let retry_after = (wait_us as u64).div_ceil(1_000_000).max(1);
                    Attempt::Done(Err(ApiError::rate_limited(t.what, retry_after)))
                }
                TokenSpend::Unreachable => Attempt::Done(Err(ApiError::LimitsUnreachable)),
                TokenSpend::Full => Attempt::Done(Err(ApiError::LimiterFull)),
                TokenSpend::Short => Attempt::Ask,
                TokenSpend::Asked => Attempt::Asked,
                TokenSpend::Waiting => Attempt::Waiting,
            }
        })
        .unwrap_or(Err(ApiError::LimitsUnreachable))
}
