//! What the hub decides, and how: the per-(store, SKU) ledger with its
//! escrow arithmetic ([`sku_ledger`], pure and property-tested), the
//! authority that decides intents against a unit of work ([`authority`]:
//! pure, backends persist what it changed), and the hub's price book
//! ([`price_book`]) for checking the prices a till saw. The intents,
//! decisions and records themselves are vocabulary shared with devices
//! (`omnisync_core::vocab::{intent, record}`).

pub mod authority;
pub mod price_book;
pub mod sku_ledger;

#[cfg(test)]
mod tests;
