//! Authorization: which documents a verified peer may read and change.
//!
//! Pure functions of the [`Peer`] the authenticator built from verified
//! claims and a set or document id, so the same rules run in the hub, in the
//! deterministic simulation and in table-driven tests. The hub session calls
//! [`authorize_subscribe`] on every `Subscribe`, [`authorize_change`] on every
//! document change of every pushed op (inside `judge_op`) and
//! [`may_read_doc`] on every change it is about to send. See
//! `docs/security.md` for the table these functions implement.
//!
//! The rules are deny by default: a role may write a document kind only if
//! the table names it, so a new kind of document stays writable by the back
//! office alone until someone adds it here.

use std::fmt;
use std::str::FromStr;

use omnisync_core::protocol::message::{ErrorCode, RejectCode};
use omnisync_core::vocab::ids::{
    CustomerId, DeviceId, DocId, DocSetId, DocSetKind, OpId, ReplicaId, StoreId, TenantId,
};
use omnisync_core::vocab::layout::{DocKind, kind_of};

/// The first path segment of documents only the hub writes (hub-decided
/// records such as `store.S/rec/stock/SKU`).
pub const HUB_RECORD_SEGMENT: &str = "rec";

/// What kind of client a device is; carried in its signed token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// A till of one store: reads its store, writes its stock and its own orders.
    Terminal,
    /// A shopper's app: reads its store's catalog, prices and stock and its
    /// own customer set; writes its own cart, wishlist, profile and history.
    CustomerApp,
    /// A store's back office: writes everything of its store (catalog and
    /// prices included), the chain set, and customers' profiles and
    /// recommendations.
    BackOffice,
    /// Another hub replicating one store: reads and writes the store and
    /// chain sets like a back office, nothing of customers.
    HubPeer,
    /// A system reading the hub's event feed (ERP, accounting, an exporter):
    /// the events of its tenant's stores on this hub, or of the stores its
    /// token lists. Never syncs documents.
    EventConsumer,
    /// The development authenticator's peers: the set lists it granted, with
    /// no per-kind rules. Never issued in a token.
    Development,
}

/// A security-relevant refusal the hub session made, for the audit log.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEvent {
    /// What was refused.
    pub kind: AuditKind,
    /// Human-readable reason (the same text the device gets).
    pub detail: String,
}

/// What an [`AuditEvent`] refused.
#[derive(Clone, Debug, PartialEq)]
pub enum AuditKind {
    /// One op, refused on its own; the rest of its push went on.
    OpRejected {
        /// The op.
        op: OpId,
        /// Why.
        code: RejectCode,
    },
    /// The whole session, closed with this code.
    SessionClosed {
        /// Why.
        code: ErrorCode,
    },
}

impl AuditKind {
    /// Stable text of the reason code, for logs and metric labels.
    pub fn code_str(&self) -> &'static str {
        match self {
            AuditKind::OpRejected { code, .. } => reject_code_str(*code),
            AuditKind::SessionClosed { code } => code.as_str(),
        }
    }
}

/// Stable text form of a [`RejectCode`] (`forbidden`, `wrong-author`, ...).
pub fn reject_code_str(code: RejectCode) -> &'static str {
    match code {
        RejectCode::MalformedChange => "malformed-change",
        RejectCode::WrongAuthor => "wrong-author",
        RejectCode::Forbidden => "forbidden",
        RejectCode::TooLarge => "too-large",
        RejectCode::Invalid => "invalid",
        // Codes added later (the enum is non-exhaustive) still get a label.
        #[allow(unreachable_patterns)]
        _ => "rejected",
    }
}

/// Why a role string did not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}; expected terminal, customer-app, back-office, hub-peer or event-consumer"
)]
pub struct UnknownRole(pub String);

impl Role {
    /// The role's name in tokens and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Terminal => "terminal",
            Role::CustomerApp => "customer-app",
            Role::BackOffice => "back-office",
            Role::HubPeer => "hub-peer",
            Role::EventConsumer => "event-consumer",
            Role::Development => "development",
        }
    }
}

impl FromStr for Role {
    type Err = UnknownRole;
    /// Parses a token's role; `development` is refused (it is never issued).
    fn from_str(text: &str) -> Result<Self, UnknownRole> {
        match text {
            "terminal" => Ok(Role::Terminal),
            "customer-app" => Ok(Role::CustomerApp),
            "back-office" => Ok(Role::BackOffice),
            "hub-peer" => Ok(Role::HubPeer),
            "event-consumer" => Ok(Role::EventConsumer),
            other => Err(UnknownRole(other.to_owned())),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Verified facts about a device, as a token states them.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The tenant (retail chain).
    pub tenant: TenantId,
    /// The device.
    pub device: DeviceId,
    /// Its store.
    pub store: StoreId,
    /// Its role.
    pub role: Role,
    /// The shopper, for a customer app.
    pub customer: Option<CustomerId>,
    /// When the credentials stop being valid, ms since the epoch.
    pub expires_ms: Option<u64>,
}

/// Who is on the other end, as established by the authenticator from
/// verified claims. What it may do is decided by the functions of this module.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    /// The device.
    pub device: DeviceId,
    /// Its store.
    pub store: StoreId,
    /// Its tenant (retail chain).
    pub tenant: TenantId,
    /// What kind of client it is.
    pub role: Role,
    /// The shopper, for a customer app.
    pub customer: Option<CustomerId>,
    /// When its credentials expire (ms since the epoch); the hub closes the
    /// session then.
    pub expires_ms: Option<u64>,
    /// Its local database; every op and automerge change must come from it.
    pub replica: ReplicaId,
    /// Sets it may subscribe to.
    pub readable: Vec<DocSetId>,
    /// Sets it may change (per-kind rules in `authz` narrow this further).
    pub writable: Vec<DocSetId>,
}

impl Peer {
    /// The peer a verified identity becomes, with the sets its role may read
    /// and write. A customer app without a customer is refused.
    pub fn from_identity(identity: Identity, replica: ReplicaId) -> Result<Peer, String> {
        let store_set = DocSetId::store(&identity.store);
        // Hub records: the store's orders and the device's own allowances are
        // readable by staff devices, never writable by anyone.
        let mut staff_records = vec![DocSetId::orders(&identity.store)];
        staff_records.extend(DocSetId::device(&identity.store, &identity.device));
        let (mut readable, writable) = match identity.role {
            Role::Terminal => (vec![store_set.clone(), DocSetId::chain()], vec![store_set]),
            Role::CustomerApp => {
                let customer = identity
                    .customer
                    .as_ref()
                    .ok_or("a customer-app token must name its customer")?;
                let customer_set = DocSetId::customer(customer);
                (
                    vec![store_set, customer_set.clone(), DocSetId::chain()],
                    vec![customer_set],
                )
            }
            Role::BackOffice | Role::HubPeer | Role::Development => (
                vec![store_set.clone(), DocSetId::chain()],
                vec![store_set, DocSetId::chain()],
            ),
            Role::EventConsumer => {
                return Err("an event-consumer token reads the event feed; it cannot sync".into());
            }
        };
        if identity.role != Role::CustomerApp {
            readable.extend(staff_records);
        }
        Ok(Peer {
            device: identity.device,
            store: identity.store,
            tenant: identity.tenant,
            role: identity.role,
            customer: identity.customer,
            expires_ms: identity.expires_ms,
            replica,
            readable,
            writable,
        })
    }
}

/// May `peer` subscribe to `set`? Checked on every `Subscribe`.
pub fn authorize_subscribe(peer: &Peer, set: &DocSetId) -> Result<(), String> {
    if peer.readable.contains(set) {
        Ok(())
    } else {
        Err(format!(
            "device {} ({}) may not read {set}",
            peer.device, peer.role
        ))
    }
}

/// May `peer` receive this document's changes in a set it follows? A
/// customer app follows its store's set for the catalog, prices and stock
/// only: orders and everything else of the store stay with the staff.
pub fn may_read_doc(peer: &Peer, doc: &DocId) -> bool {
    match peer.role {
        Role::CustomerApp if doc.set().kind() == DocSetKind::Store => {
            matches!(kind_of(doc), DocKind::Catalog | DocKind::Prices)
                || path_of(doc).starts_with("rec/stock/")
                || path_of(doc) == "manifest"
        }
        _ => true,
    }
}

/// May `peer` change `doc`? Checked for every document change of every op,
/// before storage; a refusal rejects that op alone with the returned code.
pub fn authorize_change(peer: &Peer, doc: &DocId) -> Result<(), (RejectCode, String)> {
    let forbidden = |why: String| Err((RejectCode::Forbidden, why));
    if is_hub_record(doc) {
        return forbidden(format!("{doc} is a hub record: only the hub writes it"));
    }
    let set = doc.set();
    if peer.role == Role::Development {
        if peer.writable.contains(&set) {
            return Ok(());
        }
        return forbidden(format!("device {} may not write {set}", peer.device));
    }
    let who = format!("device {} ({})", peer.device, peer.role);
    match set.kind() {
        DocSetKind::Store => {
            if set != DocSetId::store(&peer.store) {
                return forbidden(format!(
                    "{who} belongs to store {} and may not write {set}",
                    peer.store
                ));
            }
            store_change(peer, doc, &who)
        }
        DocSetKind::Customer => customer_change(peer, doc, &who),
        DocSetKind::Chain => match peer.role {
            Role::BackOffice | Role::HubPeer => Ok(()),
            _ => forbidden(format!("{who} may not write chain data ({doc})")),
        },
        DocSetKind::Orders | DocSetKind::Device => {
            forbidden(format!("{set} holds hub records: only the hub writes it"))
        }
    }
}

/// May `peer` send `intent` (acting on its own store)? Checked for every
/// intent before the authority decides it: stock commands and policies come
/// from the back office; a till checks out, changes order status and gives
/// allowance back; a customer app checks out and reserves.
pub fn authorize_intent(
    peer: &Peer,
    intent: &omnisync_core::vocab::intent::Intent,
) -> Result<(), (RejectCode, String)> {
    use omnisync_core::vocab::intent::Intent;
    let allowed = match peer.role {
        Role::BackOffice | Role::HubPeer | Role::Development => true,
        Role::Terminal => !matches!(intent, Intent::Stock(_)),
        Role::CustomerApp => matches!(
            intent,
            Intent::Checkout(_)
                | Intent::Reserve { .. }
                | Intent::CommitReservation { .. }
                | Intent::CancelReservation { .. }
        ),
        Role::EventConsumer => false,
    };
    if allowed {
        Ok(())
    } else {
        Err((
            RejectCode::Forbidden,
            format!(
                "device {} ({}) may not send {}",
                peer.device,
                peer.role,
                intent.describe()
            ),
        ))
    }
}

/// True for documents only the hub writes (`<set>/rec/...`).
pub fn is_hub_record(doc: &DocId) -> bool {
    path_of(doc).split('/').next() == Some(HUB_RECORD_SEGMENT)
}

fn store_change(peer: &Peer, doc: &DocId, who: &str) -> Result<(), (RejectCode, String)> {
    let forbidden = |why: String| Err((RejectCode::Forbidden, why));
    match peer.role {
        Role::BackOffice | Role::HubPeer | Role::Development => Ok(()),
        Role::CustomerApp | Role::EventConsumer => {
            forbidden(format!("{who} may not change store data ({doc})"))
        }
        // A till's sales, stock and order changes are intents the hub
        // decides (`authorize_intent`), never document changes. Its own
        // documents (`till/<device>/...`: shift notes, drawer counts) are its.
        Role::Terminal
            if path_of(doc) == format!("till/{}", peer.device)
                || path_of(doc).starts_with(&format!("till/{}/", peer.device)) =>
        {
            Ok(())
        }
        Role::Terminal => match kind_of(doc) {
            DocKind::Catalog | DocKind::Prices => forbidden(format!(
                "{who}: catalog and price changes come from the back office only ({doc})"
            )),
            _ => forbidden(format!(
                "{who} changes store data through intents (checkout, order status), not {doc}"
            )),
        },
    }
}

fn customer_change(peer: &Peer, doc: &DocId, who: &str) -> Result<(), (RejectCode, String)> {
    let forbidden = |why: String| Err((RejectCode::Forbidden, why));
    let kind = kind_of(doc);
    match peer.role {
        Role::CustomerApp => {
            let own = peer
                .customer
                .as_ref()
                .is_some_and(|customer| doc.set() == DocSetId::customer(customer));
            if !own {
                return forbidden(format!(
                    "{who} may not write another customer's data ({doc})"
                ));
            }
            match kind {
                DocKind::Cart | DocKind::Wishlist | DocKind::Profile | DocKind::History => Ok(()),
                _ => forbidden(format!(
                    "{who} may write its cart, wishlist, profile and history only, not {doc}"
                )),
            }
        }
        Role::BackOffice => match kind {
            DocKind::Profile | DocKind::Recommendations => Ok(()),
            _ => forbidden(format!(
                "{who} may write customers' profiles and recommendations only, not {doc}"
            )),
        },
        _ => forbidden(format!("{who} may not write customer data ({doc})")),
    }
}

/// The document's path inside its set (`stock/b001` of `store.s1/stock/b001`).
fn path_of(doc: &DocId) -> &str {
    doc.as_str().split_once('/').map_or("", |(_, path)| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(role: Role, customer: Option<&str>) -> Peer {
        Peer::from_identity(
            Identity {
                tenant: TenantId::new("acme").unwrap(),
                device: DeviceId::new("dev-1").unwrap(),
                store: StoreId::new("s1").unwrap(),
                role,
                customer: customer.map(|c| CustomerId::new(c).unwrap()),
                expires_ms: None,
            },
            ReplicaId([1; 16]),
        )
        .unwrap()
    }

    fn doc(id: &str) -> DocId {
        DocId::new(id).unwrap()
    }

    /// Every row: role, document, may write.
    #[test]
    fn the_write_table() {
        use Role::*;
        let rows: &[(Role, &str, bool)] = &[
            // A till's sales and status changes are intents, not documents.
            (Terminal, "store.s1/stock/b001", false),
            (Terminal, "store.s1/orders/dev-1", false),
            (Terminal, "store.s1/orders/till-9", false),
            (Terminal, "orders.s1/rec/order/o-1", false),
            (Terminal, "store.s1/till/dev-1/shift", true),
            (Terminal, "store.s1/till/till-9/shift", false),
            (Terminal, "device.s1.dev-1/rec/allowance/sku-1", false),
            (Terminal, "store.s1/catalog/b001", false),
            (Terminal, "store.s1/prices/b001", false),
            (Terminal, "store.s1/manifest", false),
            (Terminal, "store.s1/sales/x", false),
            (Terminal, "store.s2/stock/b001", false),
            (Terminal, "customer.c1/cart", false),
            (Terminal, "chain.main/x", false),
            (Terminal, "store.s1/rec/stock/sku-1", false),
            (BackOffice, "store.s1/catalog/b001", true),
            (BackOffice, "store.s1/prices/b001", true),
            (BackOffice, "store.s1/manifest", true),
            (BackOffice, "store.s1/orders/till-9", true),
            (BackOffice, "store.s2/catalog/b001", false),
            (BackOffice, "chain.main/x", true),
            (BackOffice, "customer.c1/recommendations", true),
            (BackOffice, "customer.c1/profile", true),
            (BackOffice, "customer.c1/cart", false),
            (BackOffice, "store.s1/rec/stock/sku-1", false),
            (HubPeer, "store.s1/stock/b001", true),
            (HubPeer, "customer.c1/profile", false),
            (HubPeer, "store.s1/rec/x", false),
        ];
        for (role, id, allowed) in rows {
            let result = authorize_change(&peer(*role, None), &doc(id));
            assert_eq!(result.is_ok(), *allowed, "{role} writing {id}: {result:?}");
            if let Err((code, _)) = result {
                assert_eq!(code, RejectCode::Forbidden);
            }
        }
    }

    #[test]
    fn the_intent_table() {
        use Role::*;
        use omnisync_core::vocab::goods::Sku;
        use omnisync_core::vocab::intent::{Intent, StockCommand};
        let receive = Intent::Stock(StockCommand::Receive {
            key: "delivery-1".parse().unwrap(),
            sku: Sku::new("sku-1").unwrap(),
            quantity: 5,
        });
        let reserve = Intent::Reserve {
            key: "web-1".parse().unwrap(),
            sku: Sku::new("sku-1").unwrap(),
            quantity: 1,
        };
        let status = Intent::OrderStatus(omnisync_core::vocab::intent::OrderStatusChange {
            order_id: "o-1".parse().unwrap(),
            expected_version: 1,
            status: "paid".parse().unwrap(),
        });
        let rows: &[(Role, &Intent, bool)] = &[
            (Terminal, &receive, false),
            (Terminal, &reserve, true),
            (Terminal, &status, true),
            (CustomerApp, &receive, false),
            (CustomerApp, &status, false),
            (CustomerApp, &reserve, true),
            (BackOffice, &receive, true),
            (BackOffice, &status, true),
        ];
        for (role, intent, allowed) in rows {
            let customer = (*role == CustomerApp).then_some("c1");
            let result = authorize_intent(&peer(*role, customer), intent);
            assert_eq!(
                result.is_ok(),
                *allowed,
                "{role} sending {intent:?}: {result:?}"
            );
        }
    }

    #[test]
    fn a_customer_app_writes_only_its_own_customer_data() {
        let app = peer(Role::CustomerApp, Some("c1"));
        for id in [
            "customer.c1/cart",
            "customer.c1/wishlist",
            "customer.c1/profile",
            "customer.c1/history",
        ] {
            assert!(authorize_change(&app, &doc(id)).is_ok(), "{id}");
        }
        for id in [
            "customer.c2/cart",
            "customer.c1/recommendations",
            "customer.c1/rec/x",
            "store.s1/catalog/b001",
            "store.s1/orders/dev-1",
            "chain.main/x",
        ] {
            assert!(authorize_change(&app, &doc(id)).is_err(), "{id}");
        }
        assert!(
            Peer::from_identity(
                Identity {
                    customer: None,
                    ..identity_of(&app)
                },
                app.replica
            )
            .is_err(),
            "a customer app needs a customer"
        );
    }

    fn identity_of(peer: &Peer) -> Identity {
        Identity {
            tenant: peer.tenant.clone(),
            device: peer.device.clone(),
            store: peer.store.clone(),
            role: peer.role,
            customer: peer.customer.clone(),
            expires_ms: peer.expires_ms,
        }
    }

    #[test]
    fn subscriptions_follow_the_role() {
        let app = peer(Role::CustomerApp, Some("c1"));
        let set = |id: &str| DocSetId::new(id).unwrap();
        assert!(authorize_subscribe(&app, &set("customer.c1")).is_ok());
        assert!(authorize_subscribe(&app, &set("customer.c2")).is_err());
        assert!(authorize_subscribe(&app, &set("store.s1")).is_ok());
        assert!(authorize_subscribe(&app, &set("store.s2")).is_err());
        let till = peer(Role::Terminal, None);
        assert!(authorize_subscribe(&till, &set("store.s1")).is_ok());
        assert!(authorize_subscribe(&till, &set("store.s2")).is_err());
        assert!(authorize_subscribe(&till, &set("customer.c1")).is_err());
    }

    #[test]
    fn a_customer_app_reads_only_public_store_documents() {
        let app = peer(Role::CustomerApp, Some("c1"));
        assert!(may_read_doc(&app, &doc("store.s1/catalog/b001")));
        assert!(may_read_doc(&app, &doc("store.s1/prices/b001")));
        assert!(may_read_doc(&app, &doc("store.s1/manifest")));
        assert!(!may_read_doc(&app, &doc("store.s1/orders/till-1")));
        assert!(may_read_doc(&app, &doc("customer.c1/cart")));
        assert!(may_read_doc(
            &peer(Role::Terminal, None),
            &doc("store.s1/orders/till-1")
        ));
    }

    #[test]
    fn development_peers_keep_their_set_lists_but_never_write_hub_records() {
        let dev = peer(Role::Development, None);
        assert!(authorize_change(&dev, &doc("store.s1/sales/x")).is_ok());
        assert!(authorize_change(&dev, &doc("store.s2/sales/x")).is_err());
        assert!(authorize_change(&dev, &doc("store.s1/rec/stock/sku")).is_err());
    }

    fn change_bytes(replica: ReplicaId) -> Vec<u8> {
        use automerge::transaction::Transactable as _;
        let mut doc = automerge::Automerge::new();
        doc.set_actor(replica.actor(1));
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "a", 1).unwrap();
        tx.commit();
        doc.get_last_local_change().unwrap().raw_bytes().to_vec()
    }

    fn ready(peer: &Peer) -> crate::hub_session::HubSession {
        use crate::hub_session::{HubEvent, HubSession};
        use omnisync_core::protocol::message::{ClientMessage, Credentials, Hello, encode};
        let mut session = HubSession::new();
        session.handle_frame(&encode(&ClientMessage::Hello(Hello {
            device: peer.device.clone(),
            store: peer.store.clone(),
            replica: peer.replica,
            credentials: Credentials::default(),
            agent: "test".into(),
            versions: None,
            probe: None,
        })));
        assert!(matches!(
            session.poll_event(),
            Some(HubEvent::Authenticate(_))
        ));
        session.handle_authenticated(Ok(peer.clone()), "hub", "log", 0);
        while session.poll_transmit().is_some() {}
        session
    }

    #[test]
    fn a_forbidden_op_is_refused_alone_and_audited_while_its_batch_goes_on() {
        use crate::hub_session::{HubEvent, Verdict};
        use omnisync_core::protocol::message::{ClientMessage, DocChange, Op, OpBody, encode};
        let till = peer(Role::Terminal, None);
        let mut session = ready(&till);
        let op = |seq, id: &str| Op {
            id: OpId {
                replica: till.replica,
                seq,
            },
            created_ms: 0,
            body: OpBody::Changes(vec![DocChange {
                doc: doc(id),
                bytes: change_bytes(till.replica),
            }]),
        };
        let mut checkout = op(2, "store.s1/prices/b001");
        checkout.body = OpBody::Intent(omnisync_core::vocab::intent::Intent::CommitReservation {
            key: "web-1".parse().unwrap(),
        });
        session.handle_frame(&encode(&ClientMessage::Push(vec![
            op(1, "store.s1/prices/b001"),
            checkout,
        ])));
        let Some(HubEvent::Apply(ops)) = session.poll_event() else {
            panic!("the batch goes to storage")
        };
        assert!(matches!(
            ops[0].verdict,
            Verdict::Reject {
                code: RejectCode::Forbidden,
                ..
            }
        ));
        assert_eq!(ops[1].verdict, Verdict::Accept);
        assert!(!session.is_closed(), "the session goes on");
        let audit = session.poll_audit().expect("an audit event");
        assert_eq!(
            audit.kind,
            AuditKind::OpRejected {
                op: ops[0].op.id,
                code: RejectCode::Forbidden
            }
        );
        assert!(audit.detail.contains("back office"), "{}", audit.detail);
        assert!(session.poll_audit().is_none());
    }

    #[test]
    fn a_customer_app_never_receives_store_orders() {
        use crate::hub_session::{ChangePage, CommittedChanges};
        use omnisync_core::protocol::message::{
            ClientMessage, HubMessage, RemoteChange, SubscriptionRequest, decode, encode,
        };
        let app = peer(Role::CustomerApp, Some("c1"));
        let mut session = ready(&app);
        let set = DocSetId::new("store.s1").unwrap();
        session.handle_frame(&encode(&ClientMessage::Subscribe(vec![
            SubscriptionRequest {
                set: set.clone(),
                cursor: 0,
            },
        ])));
        assert!(session.poll_catch_up().is_some());
        let change = |hub_seq, id: &str| RemoteChange {
            hub_seq,
            doc: doc(id),
            origin: ReplicaId([9; 16]),
            bytes: vec![1],
        };
        session.handle_catch_up_page(
            &set,
            ChangePage {
                changes: vec![
                    change(1, "store.s1/orders/till-1"),
                    change(2, "store.s1/prices/b001"),
                ],
                cursor: 2,
                caught_up: true,
                resume: None,
            },
        );
        let mut committed = CommittedChanges::default();
        committed.by_set.insert(
            set.clone(),
            vec![
                change(3, "store.s1/orders/till-2"),
                change(4, "store.s1/catalog/b001"),
            ],
        );
        session.handle_committed(&committed);
        let mut sent = Vec::new();
        let mut cursor = 0;
        while let Some(crate::hub_session::Outbound::Frame(frame)) = session.poll_transmit() {
            if let Ok(HubMessage::Changes(batch)) = decode(&frame) {
                sent.extend(batch.changes.iter().map(|c| c.doc.to_string()));
                cursor = batch.cursor;
            }
        }
        assert_eq!(sent, ["store.s1/prices/b001", "store.s1/catalog/b001"]);
        assert_eq!(cursor, 4, "the cursor still moves past what was withheld");
    }

    #[test]
    fn roles_parse_and_development_is_never_a_token_role() {
        for role in [
            Role::Terminal,
            Role::CustomerApp,
            Role::BackOffice,
            Role::HubPeer,
        ] {
            assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        }
        assert!("development".parse::<Role>().is_err());
        assert!("admin".parse::<Role>().is_err());
    }
}
