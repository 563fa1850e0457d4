//! Where each kind of retail data lives: document ids and their kinds.

use crate::vocab::goods::{BUCKETS, Sku};
use crate::vocab::ids::{CustomerId, DocId, DocSetId, DocSetKind, StoreId};

/// What a document holds, derived from its id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DocKind {
    /// `store.S/catalog/bNNN`: product metadata.
    Catalog,
    /// `store.S/prices/bNNN`: prices.
    Prices,
    /// `SET/rec/...`: records written by the hub only (stock, allowances,
    /// orders); see `ledger::record`.
    Record,
    /// `customer.C/cart`.
    Cart,
    /// `customer.C/wishlist`.
    Wishlist,
    /// `customer.C/profile`.
    Profile,
    /// `customer.C/history`.
    History,
    /// `customer.C/recommendations`.
    Recommendations,
    /// Anything else (no projection).
    Other,
}

/// The kind of a document.
pub fn kind_of(doc: &DocId) -> DocKind {
    let set = doc.set();
    let path = doc
        .as_str()
        .split_once('/')
        .map(|(_, path)| path)
        .unwrap_or("");
    let mut parts = path.split('/');
    let first = parts.next().unwrap_or("");
    let second = parts.next();
    let third = parts.next();
    match (set.kind(), first, second, third) {
        (DocSetKind::Store, "catalog", Some(bucket), None) if is_bucket(bucket) => DocKind::Catalog,
        (DocSetKind::Store, "prices", Some(bucket), None) if is_bucket(bucket) => DocKind::Prices,
        (_, "rec", Some(_), _) => DocKind::Record,
        (DocSetKind::Customer, "cart", None, None) => DocKind::Cart,
        (DocSetKind::Customer, "wishlist", None, None) => DocKind::Wishlist,
        (DocSetKind::Customer, "profile", None, None) => DocKind::Profile,
        (DocSetKind::Customer, "history", None, None) => DocKind::History,
        (DocSetKind::Customer, "recommendations", None, None) => DocKind::Recommendations,
        _ => DocKind::Other,
    }
}

/// Which hub record a `SET/rec/KIND/NAME` document holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RecordKind {
    /// `store.S/rec/stock/SKU`: a SKU's stock.
    Stock,
    /// `device.S.D/rec/allowance/SKU`: one terminal's allowance of a SKU
    /// (a recall arrives as one).
    Allowance,
    /// `orders.S/rec/order/ID`: a decided order.
    Order,
}

/// The kind of hub record a document holds; `None` for any document that is
/// not a record document of a known kind in the set kind that holds it.
pub fn record_kind(doc: &DocId) -> Option<RecordKind> {
    let mut parts = doc.as_str().split('/').skip(1);
    let (Some("rec"), Some(kind), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    match (doc.set().kind(), kind) {
        (DocSetKind::Store, "stock") => Some(RecordKind::Stock),
        (DocSetKind::Device, "allowance") => Some(RecordKind::Allowance),
        (DocSetKind::Orders, "order") => Some(RecordKind::Order),
        _ => None,
    }
}

fn is_bucket(text: &str) -> bool {
    text.len() == 4
        && text.starts_with('b')
        && text[1..]
            .parse::<u32>()
            .is_ok_and(|bucket| bucket < BUCKETS)
}

fn bucket_doc(store: &StoreId, area: &str, sku: &Sku) -> DocId {
    // Store ids and bucket names are valid segments by construction.
    DocId::in_set(
        &DocSetId::store(store),
        &format!("{area}/b{:03}", sku.bucket()),
    )
    .expect("valid bucket doc id")
}

/// The catalog document holding `sku`.
pub fn catalog_doc(store: &StoreId, sku: &Sku) -> DocId {
    bucket_doc(store, "catalog", sku)
}

/// The price document holding `sku`.
pub fn prices_doc(store: &StoreId, sku: &Sku) -> DocId {
    bucket_doc(store, "prices", sku)
}

fn customer_doc(customer: &CustomerId, name: &str) -> DocId {
    DocId::in_set(&DocSetId::customer(customer), name).expect("valid customer doc id")
}

/// A customer's cart.
pub fn cart_doc(customer: &CustomerId) -> DocId {
    customer_doc(customer, "cart")
}

/// A customer's wishlist.
pub fn wishlist_doc(customer: &CustomerId) -> DocId {
    customer_doc(customer, "wishlist")
}

/// A customer's profile.
pub fn profile_doc(customer: &CustomerId) -> DocId {
    customer_doc(customer, "profile")
}

/// A customer's recommendations.
pub fn recommendations_doc(customer: &CustomerId) -> DocId {
    customer_doc(customer, "recommendations")
}

/// A store's catalog manifest: bucket count and the size of the last import.
pub fn manifest_doc(store: &StoreId) -> DocId {
    DocId::in_set(&DocSetId::store(store), "manifest").expect("valid manifest doc id")
}

/// A customer's browsing history.
pub fn history_doc(customer: &CustomerId) -> DocId {
    customer_doc(customer, "history")
}

/// The customer a customer-set document belongs to.
pub fn customer_of(doc: &DocId) -> Option<CustomerId> {
    let set = doc.set();
    (set.kind() == DocSetKind::Customer)
        .then(|| CustomerId::new(set.name()).ok())
        .flatten()
}

/// The store a store-set document belongs to.
pub fn store_of(doc: &DocId) -> Option<StoreId> {
    let set = doc.set();
    (set.kind() == DocSetKind::Store)
        .then(|| StoreId::new(set.name()).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_follow_the_layout() {
        let store = StoreId::new("s1").unwrap();
        let sku = Sku::new("sku-1").unwrap();
        assert_eq!(kind_of(&catalog_doc(&store, &sku)), DocKind::Catalog);
        assert_eq!(kind_of(&prices_doc(&store, &sku)), DocKind::Prices);
        assert_eq!(
            kind_of(&DocId::new("store.s1/rec/stock/sku-1").unwrap()),
            DocKind::Record
        );
        let customer = CustomerId::new("c1").unwrap();
        assert_eq!(kind_of(&cart_doc(&customer)), DocKind::Cart);
        let record = |id: &str| record_kind(&DocId::new(id).unwrap());
        assert_eq!(record("store.s1/rec/stock/sku-1"), Some(RecordKind::Stock));
        assert_eq!(
            record("device.s1.till-1/rec/allowance/sku-1"),
            Some(RecordKind::Allowance)
        );
        assert_eq!(record("orders.s1/rec/order/o-1"), Some(RecordKind::Order));
        assert_eq!(
            record("store.s1/rec/allowance/sku-1"),
            None,
            "wrong set kind"
        );
        assert_eq!(record("store.s1/notes/rec/allowance/x"), None);
        assert_eq!(record("device.s1.till-1/rec/allowance"), None);
        assert_eq!(record("store.s1/catalog/b001"), None);
        assert_eq!(
            kind_of(&DocId::new("store.s1/catalog/b999").unwrap()),
            DocKind::Other
        );
        assert_eq!(
            kind_of(&DocId::new("store.s1/catalog").unwrap()),
            DocKind::Other
        );
        assert_eq!(customer_of(&cart_doc(&customer)), Some(customer));
    }

    #[test]
    fn buckets_spread_skus() {
        let mut counts = vec![0u32; BUCKETS as usize];
        for n in 0..100_000 {
            counts[Sku::new(format!("sku-{n}")).unwrap().bucket() as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 250 && *max < 550, "uneven buckets: {min}..{max}");
    }
}
