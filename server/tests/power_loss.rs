//! Power-loss test of the hub's log: an op the hub acknowledged must still
//! be there, with the same answer, after the power goes at any moment.
//!
//! This binary registers the VFS shim of `core/tests/support/power_loss_vfs.rs`
//! (whose header says what it models and what it does not) as the process's
//! default VFS, so [`storage::open`] goes through it unchanged. Ops are
//! applied in batches; the power is cut right after a batch was acknowledged
//! or at a random write, truncate, sync or delete in the middle of one; the
//! log is reopened from what had reached stable storage and checked:
//!
//! - `PRAGMA integrity_check` passes;
//! - the head is at least the highest acknowledged sequence number;
//! - every acknowledged op, sent again, is a duplicate (the hub still knows
//!   it) and gets its original answer, and no sequence number is ever given
//!   to two ops, across cuts.
//!
//! The same checker must find lost acknowledgements on a disk that ignores
//! syncs (what `synchronous=OFF` amounts to). Everything is seeded
//! (`POWER_LOSS_SEED=<n>` explores another schedule).

// Shared with the device's power-loss test, which uses other parts of it.
#[allow(dead_code)]
#[path = "../../core/tests/support/power_loss_vfs.rs"]
mod power_loss_vfs;

use std::path::Path;

use omnisync_core::OpId;
use omnisync_core::protocol::message::{AckOutcome, DocChange, Op, OpBody};
use omnisync_core::vocab::ids::{DeviceId, DocId, ReplicaId, StoreId};
use omnisync_hub::storage::{self, DB_FILE_NAME, SqliteHubLog};
use omnisync_hub_engine::hub_session::{IncomingOp, Verdict};
use omnisync_hub_engine::log::HubLog;
use power_loss_vfs::{Disk, Keep, Rng, SyncModel};

/// Seed of the scenario.
const SEED: u64 = 0x0acc_5eed_2026_1202;
/// Batches applied per scenario.
const BATCHES: usize = 200;
/// Most ops in one batch (one group commit).
const BATCH_OPS_MAX: u64 = 4;
/// Devices pushing ops.
const DEVICES: u8 = 3;
/// Documents the ops change.
const DOCS: u64 = 5;
/// Most bytes in one change.
const CHANGE_BYTES_MAX: u64 = 300;
/// After a batch was acknowledged, the power goes with probability 1 in this.
const CUT_AFTER_ACK_ONE_IN: u64 = 5;
/// Before a batch, a cut is armed with probability 1 in this...
const CUT_ARMED_ONE_IN: u64 = 3;
/// ...after fewer than this many further changes reach the disk.
const CHANGES_BEFORE_CUT_MAX: u64 = 24;
/// Fewest cuts of each kind the scenario must make to mean anything.
const CUTS_MIN: usize = 20;

#[derive(Debug, Default)]
struct Outcome {
    broken: Vec<String>,
    acked: usize,
    cuts_after_ack: usize,
    cuts_mid_batch: usize,
}

fn incoming(rng: &mut Rng, device: u8, seq: u64) -> IncomingOp {
    let len = 1 + rng.below(CHANGE_BYTES_MAX) as usize;
    let bytes = (0..len).map(|_| rng.next_u64() as u8).collect();
    IncomingOp {
        op: Op {
            id: OpId {
                replica: ReplicaId([device; 16]),
                seq,
            },
            created_ms: 0,
            body: OpBody::Changes(vec![DocChange {
                doc: DocId::new(format!("store.a/x{}", rng.below(DOCS))).expect("doc id"),
                bytes,
            }]),
        },
        device: DeviceId::new(format!("till-{device}")).expect("device id"),
        store: StoreId::new("a").expect("store id"),
        verdict: Verdict::Accept,
    }
}

fn hub_seq(outcome: &AckOutcome) -> u64 {
    match outcome {
        AckOutcome::Applied { hub_seq } => *hub_seq,
        other => panic!("a change op was answered {other:?}"),
    }
}

fn open(dir: &Path) -> SqliteHubLog {
    storage::open(dir).expect("the hub log opens after a power cut")
}

fn run(model: SyncModel, mid_batch_cuts: bool) -> Outcome {
    power_loss_vfs::install(true);
    let dir = tempfile::tempdir().expect("temporary directory");
    let disk = Disk::attach(dir.path(), model);
    let mut rng = Rng::new(power_loss_vfs::seed(SEED));
    let mut log = open(dir.path());
    let mut acked: Vec<(IncomingOp, AckOutcome)> = Vec::new();
    let mut next_seq = [1u64; DEVICES as usize];
    let mut seq_high = 0;
    let mut outcome = Outcome::default();
    for batch in 0..BATCHES {
        if mid_batch_cuts && rng.one_in(CUT_ARMED_ONE_IN) {
            disk.cut_after(rng.below(CHANGES_BEFORE_CUT_MAX));
        }
        let ops: Vec<IncomingOp> = (0..=rng.below(BATCH_OPS_MAX))
            .map(|_| {
                let device = rng.below(u64::from(DEVICES)) as u8;
                let seq = next_seq[usize::from(device)];
                next_seq[usize::from(device)] += 1;
                incoming(&mut rng, device, seq)
            })
            .collect();
        let answered = match log.apply(ops.clone()) {
            Ok(applied) => {
                for (op, ack) in ops.into_iter().zip(applied.acks) {
                    let seq = hub_seq(&ack.outcome);
                    if seq <= seq_high {
                        outcome.broken.push(format!(
                            "batch {batch}: hub sequence number {seq} given again (had {seq_high})"
                        ));
                    }
                    seq_high = seq_high.max(seq);
                    acked.push((op, ack.outcome));
                    outcome.acked += 1;
                }
                true
            }
            Err(error) => {
                assert!(
                    disk.is_cut(),
                    "batch {batch}: apply failed with the power on: {error}"
                );
                false
            }
        };
        let cut = disk.is_cut();
        if cut || (answered && rng.one_in(CUT_AFTER_ACK_ONE_IN)) || batch + 1 == BATCHES {
            if cut {
                outcome.cuts_mid_batch += 1;
            } else {
                outcome.cuts_after_ack += 1;
            }
            disk.cut_power(log, Keep::RandomPrefix(rng.next_u64()));
            log = open(dir.path());
            check(&mut log, dir.path(), &acked, batch, &mut outcome.broken);
        }
    }
    drop(log);
    drop(disk);
    outcome
}

fn check(
    log: &mut SqliteHubLog,
    dir: &Path,
    acked: &[(IncomingOp, AckOutcome)],
    batch: usize,
    broken: &mut Vec<String>,
) {
    // The default VFS is the shim: this connection goes through it too.
    let integrity: String = rusqlite::Connection::open(dir.join(DB_FILE_NAME))
        .and_then(|db| db.query_row("PRAGMA integrity_check", [], |row| row.get(0)))
        .expect("integrity check");
    if integrity != "ok" {
        broken.push(format!("after batch {batch}: integrity check: {integrity}"));
    }
    let head = log.head_seq().expect("head");
    let highest = acked
        .iter()
        .map(|(_, outcome)| hub_seq(outcome))
        .max()
        .unwrap_or(0);
    if head < highest {
        broken.push(format!(
            "after batch {batch}: lost acknowledged ops: head {head} below {highest}"
        ));
    }
    if acked.is_empty() {
        return;
    }
    let again = log
        .apply(acked.iter().map(|(op, _)| op.clone()).collect())
        .expect("apply the acknowledged ops again");
    if again.duplicates != acked.len() {
        broken.push(format!(
            "after batch {batch}: lost acknowledged ops: of {} sent again, {} were new to the hub",
            acked.len(),
            acked.len() - again.duplicates
        ));
    }
    for ((op, first), second) in acked.iter().zip(&again.acks) {
        if second.outcome != *first {
            broken.push(format!(
                "after batch {batch}: lost op {:?}: acknowledged {first:?}, now {:?}",
                op.op.id, second.outcome
            ));
        }
    }
}

fn summary(name: &str, outcome: &Outcome) {
    println!(
        "{name}: {} ops acknowledged, {} cuts after an ack, {} mid-batch, {} broken promises",
        outcome.acked,
        outcome.cuts_after_ack,
        outcome.cuts_mid_batch,
        outcome.broken.len()
    );
    for broken in outcome.broken.iter().take(3) {
        println!("  {broken}");
    }
}

#[test]
fn every_acknowledged_op_survives_power_cuts() {
    let outcome = run(SyncModel::Honest, true);
    summary("hub, synchronous=FULL", &outcome);
    assert!(
        outcome.broken.is_empty(),
        "broken promises: {:#?}",
        outcome.broken
    );
    assert!(
        outcome.cuts_after_ack >= CUTS_MIN && outcome.cuts_mid_batch >= CUTS_MIN,
        "too few cuts to mean anything: {outcome:?}"
    );
}

/// The checker bites: on a disk that acknowledges syncs without doing them
/// (what `synchronous=OFF` amounts to), acknowledged ops are lost, and found.
#[test]
fn acknowledgements_on_a_disk_that_ignores_syncs_are_found_lost() {
    let outcome = run(SyncModel::Ignored, false);
    summary("hub, syncs ignored", &outcome);
    assert!(
        outcome.broken.iter().any(|broken| broken.contains("lost")),
        "the checker missed lost acknowledgements: {outcome:?}"
    );
}
