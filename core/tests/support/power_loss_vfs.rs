//! A SQLite VFS that models the operating system's page cache and can cut
//! the power, for tests of what a commit promises.
//!
//! The shim wraps the process's default VFS (`unix` on Linux and macOS):
//! every file SQLite opens through it really lives on disk, so reads,
//! locks and the WAL index behave as in production. On top of that, for
//! every file under a directory attached as a [`Disk`], it keeps a *durable
//! image* in memory:
//!
//! - `xWrite` and `xTruncate` reach the real file (the page cache: later
//!   reads see them) and are queued as *pending*;
//! - `xSync` makes the file's pending writes durable (how much of a sync
//!   counts depends on the [`SyncModel`]); the real `fsync` is skipped, since
//!   the durable image lives in memory;
//! - a file exists after a power cut only once it has been synced (SQLite
//!   syncs the directory of a new journal or WAL file with its first sync);
//! - a deleted file is gone at once;
//! - [`Disk::cut_power`] freezes the disk (every later write, truncate, sync
//!   or delete fails with an I/O error, as a dead machine would never return),
//!   drops what the caller hands it (its connections close against the dead
//!   disk), then rewrites every file from its durable image: the unsynced
//!   writes are lost, or, with [`Keep::RandomPrefix`], a random prefix of each
//!   file's unsynced writes (in issue order) survives, independently per file.
//! - [`Disk::cut_after`] arms a cut in the middle of whatever runs next: the
//!   n-th following write, truncate, sync or delete fails and freezes the disk.
//!
//! Not modelled: torn or partially written sectors (a write survives whole
//! or not at all), writes of one file reaching the disk out of issue order,
//! lost or reordered directory operations other than creation (a deletion is
//! durable at once), the `-shm` wal-index (shared memory that SQLite opens
//! by itself and rebuilds from the WAL after a crash; it is left as it was),
//! media errors, and several processes sharing a disk.
//!
//! The shim is registered once per process ([`install`]), under the name
//! [`VFS_NAME`], optionally as the default VFS so that code opening
//! databases by path (the hub's storage) goes through it too. Files outside
//! every attached [`Disk`] pass straight through.
//!
//! Shared by the device's test (`core/tests/power_loss.rs`) and the hub's
//! (`server/tests/power_loss.rs`).

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Mutex, MutexGuard, OnceLock};

use rusqlite::ffi;

/// The name the shim is registered under.
pub const VFS_NAME: &str = "powerloss";
const VFS_NAME_C: &CStr = c"powerloss";
/// Low bits of `xSync` flags that say how hard to sync.
const SYNC_KIND_MASK: c_int = 0x0f;
/// `sqlite3_io_methods` version the shim implements: shared memory (WAL),
/// no memory-mapped reads (SQLite then reads through `xRead`).
const IO_METHODS_VERSION: c_int = 2;

/// Which `xSync` calls make pending writes durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncModel {
    /// Every sync (Linux `fsync`/`fdatasync`, Windows `FlushFileBuffers`).
    Honest,
    /// Only a sync with `SQLITE_SYNC_FULL` (SQLite asks for it when
    /// `PRAGMA fullfsync` or `checkpoint_fullfsync` is on): Apple platforms,
    /// where `fsync` leaves the data in the drive's volatile cache and only
    /// `fcntl(F_FULLFSYNC)` flushes it.
    FullFsyncOnly,
    /// None: a disk that acknowledges flushes it never does, which is what
    /// `synchronous=OFF` amounts to.
    Ignored,
}

impl SyncModel {
    fn makes_durable(self, flags: c_int) -> bool {
        match self {
            SyncModel::Honest => true,
            SyncModel::FullFsyncOnly => flags & SYNC_KIND_MASK == ffi::SQLITE_SYNC_FULL,
            SyncModel::Ignored => false,
        }
    }
}

/// What survives of the writes no sync covered when the power goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// Nothing: every unsynced write is lost.
    Nothing,
    /// For each file, a prefix of its unsynced writes of a length drawn from
    /// the seed (possibly none, possibly all).
    RandomPrefix(u64),
}

/// What a power cut threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Unsynced writes and truncations, over every file of the disk.
    pub pending: usize,
    /// Of those, the ones that reached the disk anyway.
    pub kept: usize,
    /// Files that vanished (created but never synced).
    pub vanished: usize,
}

/// Environment variable that replaces the tests' fixed seeds, to explore
/// other schedules (decimal, or hexadecimal with `0x`).
pub const SEED_ENV: &str = "POWER_LOSS_SEED";

/// The seed to use: [`SEED_ENV`] if set, else `fixed`.
pub fn seed(fixed: u64) -> u64 {
    let Ok(text) = std::env::var(SEED_ENV) else {
        return fixed;
    };
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.unwrap_or_else(|error| panic!("{SEED_ENV}={text:?}: {error}"))
}

/// A small deterministic generator (SplitMix64) for seeded tests.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }

    /// True with probability 1/`n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.below(n) == 0
    }
}

enum Pending {
    Write { offset: usize, data: Vec<u8> },
    Truncate(usize),
}

impl Pending {
    fn apply(&self, content: &mut Vec<u8>) {
        match self {
            Pending::Write { offset, data } => {
                let end = offset + data.len();
                if content.len() < end {
                    content.resize(end, 0);
                }
                content[*offset..end].copy_from_slice(data);
            }
            Pending::Truncate(len) => content.resize(*len, 0),
        }
    }
}

#[derive(Default)]
struct FileImage {
    /// What a power cut leaves; `None` while the file was never synced.
    durable: Option<Vec<u8>>,
    /// Writes and truncations since the last sync that counted, in order.
    pending: Vec<Pending>,
}

impl FileImage {
    fn make_durable(&mut self) {
        let mut content = self.durable.take().unwrap_or_default();
        for pending in self.pending.drain(..) {
            pending.apply(&mut content);
        }
        self.durable = Some(content);
    }
}

struct DiskState {
    model: SyncModel,
    /// The power is out: every change fails.
    frozen: bool,
    /// Changes still allowed before the power goes.
    cut_after: Option<u64>,
    /// Writes, truncations, syncs and deletes so far.
    changes: u64,
    files: BTreeMap<PathBuf, FileImage>,
}

impl DiskState {
    /// Counts one change; false when the power is (now) out.
    fn admit(&mut self) -> bool {
        if self.frozen {
            return false;
        }
        match self.cut_after {
            Some(0) => {
                self.frozen = true;
                self.cut_after = None;
                return false;
            }
            Some(left) => self.cut_after = Some(left - 1),
            None => {}
        }
        self.changes += 1;
        true
    }
}

/// Attached disks by their (canonical) directory.
static DISKS: Mutex<BTreeMap<PathBuf, DiskState>> = Mutex::new(BTreeMap::new());

fn disks() -> MutexGuard<'static, BTreeMap<PathBuf, DiskState>> {
    DISKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Which disk, and which file on it, a path names.
struct Tracked {
    disk: PathBuf,
    path: PathBuf,
}

fn locate(name: *const c_char) -> Option<Tracked> {
    if name.is_null() {
        return None;
    }
    // SAFETY: SQLite passes a NUL-terminated path that outlives the call.
    let name = unsafe { CStr::from_ptr(name) };
    let path = Path::new(name.to_str().ok()?);
    let dir = std::fs::canonicalize(path.parent()?).ok()?;
    if !disks().contains_key(&dir) {
        return None;
    }
    let path = dir.join(path.file_name()?);
    Some(Tracked { disk: dir, path })
}

/// The file handle SQLite holds: ours, followed in the same allocation by
/// the base VFS's own handle.
#[repr(C)]
struct ShimFile {
    head: ffi::sqlite3_file,
    /// Owned (`Box::into_raw`); null for a file on no attached disk.
    tracked: *mut Tracked,
    real: *mut ffi::sqlite3_file,
}

struct Installed {
    base: *mut ffi::sqlite3_vfs,
    as_default: bool,
}

// SAFETY: the base VFS is a process-wide static of SQLite, safe to use from
// any thread (SQLite is built thread-safe).
unsafe impl Send for Installed {}
// SAFETY: as above; the pointer is never written after installation.
unsafe impl Sync for Installed {}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

fn base_vfs() -> *mut ffi::sqlite3_vfs {
    INSTALLED.get().expect("power-loss VFS installed").base
}

/// Registers the shim (once per process) over the current default VFS,
/// as the new default when `as_default`. Returns its name.
pub fn install(as_default: bool) -> &'static str {
    let installed = INSTALLED.get_or_init(|| {
        // SAFETY: sqlite3_vfs_find(NULL) returns the default VFS, a static
        // that lives as long as the process. The copy keeps its pAppData and
        // helper methods (which only read pAppData and mxPathname), and the
        // leaked copy outlives every connection, as registration requires.
        unsafe {
            let base = ffi::sqlite3_vfs_find(ptr::null());
            assert!(!base.is_null(), "SQLite has a default VFS");
            let mut vfs: ffi::sqlite3_vfs = ptr::read(base);
            vfs.zName = VFS_NAME_C.as_ptr();
            vfs.pNext = ptr::null_mut();
            vfs.szOsFile = c_int::try_from(std::mem::size_of::<ShimFile>()).expect("small struct")
                + (*base).szOsFile;
            vfs.xOpen = Some(shim_open);
            vfs.xDelete = Some(shim_delete);
            let vfs = Box::into_raw(Box::new(vfs));
            let rc = ffi::sqlite3_vfs_register(vfs, c_int::from(as_default));
            assert_eq!(rc, ffi::SQLITE_OK, "registering the power-loss VFS");
            Installed { base, as_default }
        }
    });
    assert_eq!(
        installed.as_default, as_default,
        "the power-loss VFS is installed once per process, the same way"
    );
    VFS_NAME
}

/// A directory whose files the shim tracks; detached when dropped.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
}

impl Disk {
    /// Tracks every file SQLite opens in `dir` (which must exist) from now on.
    pub fn attach(dir: &Path, model: SyncModel) -> Self {
        let dir = std::fs::canonicalize(dir).expect("disk directory");
        let previous = disks().insert(
            dir.clone(),
            DiskState {
                model,
                frozen: false,
                cut_after: None,
                changes: 0,
                files: BTreeMap::new(),
            },
        );
        assert!(previous.is_none(), "{} is attached twice", dir.display());
        Self { dir }
    }

    fn with<T>(&self, work: impl FnOnce(&mut DiskState) -> T) -> T {
        let mut disks = disks();
        work(disks.get_mut(&self.dir).expect("attached disk"))
    }

    /// Writes, truncations, syncs and deletes the disk accepted so far.
    pub fn changes(&self) -> u64 {
        self.with(|disk| disk.changes)
    }

    /// Cuts the power in the middle of what runs next: the disk accepts
    /// `changes` more writes, truncations, syncs or deletes, then fails.
    pub fn cut_after(&self, changes: u64) {
        self.with(|disk| disk.cut_after = Some(changes));
    }

    /// True once the power is out (after [`Disk::cut_after`] ran out).
    pub fn is_cut(&self) -> bool {
        self.with(|disk| disk.frozen)
    }

    /// Cuts the power: nothing more reaches the disk, `victim` (whatever
    /// holds connections to it) is dropped, and each file is rewritten from
    /// what had reached stable storage. The disk then works again.
    pub fn cut_power<T>(&self, victim: T, keep: Keep) -> CutReport {
        self.with(|disk| disk.frozen = true);
        drop(victim);
        let mut rng = match keep {
            Keep::Nothing => None,
            Keep::RandomPrefix(seed) => Some(Rng::new(seed)),
        };
        self.with(|disk| {
            let mut report = CutReport::default();
            disk.files.retain(|path, image| {
                let pending = std::mem::take(&mut image.pending);
                report.pending += pending.len();
                let Some(mut content) = image.durable.take() else {
                    report.vanished += 1;
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                        Err(error) => panic!("removing {}: {error}", path.display()),
                    }
                    return false;
                };
                let kept = rng.as_mut().map_or(0, |rng| {
                    usize::try_from(rng.below(pending.len() as u64 + 1)).expect("small")
                });
                report.kept += kept;
                for write in &pending[..kept] {
                    write.apply(&mut content);
                }
                std::fs::write(path, &content)
                    .unwrap_or_else(|error| panic!("restoring {}: {error}", path.display()));
                image.durable = Some(content);
                true
            });
            disk.frozen = false;
            disk.cut_after = None;
            report
        })
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        disks().remove(&self.dir);
    }
}

/// The file handle's parts: the base VFS's handle and what the shim tracks.
///
/// # Safety
///
/// `file` is a handle [`shim_open`] opened successfully and not yet closed.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, Option<&'a Tracked>) {
    let shim = file.cast::<ShimFile>();
    // SAFETY: per the contract, `file` is a live ShimFile whose `tracked` is
    // null or a live Box owned by it.
    unsafe { ((*shim).real, (*shim).tracked.as_ref()) }
}

/// The base VFS's method `$name` of the real handle `$real`; use inside an
/// `unsafe` block whose `SAFETY` comment covers it: the base VFS opened
/// `$real` successfully, so its pMethods points at the base's io methods,
/// which implement every method of version 2.
macro_rules! real_method {
    ($real:expr, $name:ident) => {
        (*(*$real).pMethods).$name.expect(stringify!($name))
    };
}

/// Runs a change (write, truncate) on a tracked file: refused when the
/// power is out, otherwise done on the real file and queued as pending.
fn change(
    tracked: Option<&Tracked>,
    refused: c_int,
    real: impl FnOnce() -> c_int,
    pending: impl FnOnce() -> Pending,
) -> c_int {
    let Some(tracked) = tracked else {
        return real();
    };
    let mut disks = disks();
    let Some(disk) = disks.get_mut(&tracked.disk) else {
        drop(disks);
        return real();
    };
    if !disk.admit() {
        return refused;
    }
    let rc = real();
    if rc == ffi::SQLITE_OK {
        disk.files
            .entry(tracked.path.clone())
            .or_default()
            .pending
            .push(pending());
    }
    rc
}

unsafe extern "C" fn shim_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let shim = file.cast::<ShimFile>();
    // SAFETY: SQLite allocated `szOsFile` bytes for `file`: a ShimFile and,
    // right after it (pointer-aligned), the base VFS's handle.
    let real = unsafe {
        file.cast::<u8>()
            .add(std::mem::size_of::<ShimFile>())
            .cast::<ffi::sqlite3_file>()
    };
    // SAFETY: as above; the handle is ours to initialise.
    unsafe {
        (*shim).head.pMethods = ptr::null();
        (*shim).tracked = ptr::null_mut();
        (*shim).real = real;
        (*real).pMethods = ptr::null();
    }
    let tracked = locate(name);
    let existed = tracked
        .as_ref()
        .is_some_and(|tracked| tracked.path.exists());
    let base = base_vfs();
    // SAFETY: the base VFS's own xOpen with its own pointer and a handle of
    // its szOsFile bytes.
    let rc = unsafe { (*base).xOpen.expect("xOpen")(base, name, real, flags, out_flags) };
    if rc != ffi::SQLITE_OK {
        // SAFETY: a base handle with methods set must be closed even when
        // opening failed.
        unsafe {
            if !(*real).pMethods.is_null() {
                real_method!(real, xClose)(real);
            }
        }
        return rc;
    }
    if let Some(tracked) = tracked {
        let mut disks = disks();
        if let Some(disk) = disks.get_mut(&tracked.disk) {
            disk.files
                .entry(tracked.path.clone())
                .or_insert_with(|| FileImage {
                    durable: existed.then(|| std::fs::read(&tracked.path).unwrap_or_default()),
                    pending: Vec::new(),
                });
        }
        // SAFETY: the handle is ours; the Box is freed in shim_close.
        unsafe { (*shim).tracked = Box::into_raw(Box::new(tracked)) };
    }
    // SAFETY: the handle is ours; SHIM_IO is a static.
    unsafe { (*shim).head.pMethods = &SHIM_IO };
    ffi::SQLITE_OK
}

unsafe extern "C" fn shim_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let base = base_vfs();
    // SAFETY: the base VFS's own xDelete with its own pointer and SQLite's name.
    let real = || unsafe { (*base).xDelete.expect("xDelete")(base, name, sync_dir) };
    let Some(tracked) = locate(name) else {
        return real();
    };
    let mut disks = disks();
    let Some(disk) = disks.get_mut(&tracked.disk) else {
        drop(disks);
        return real();
    };
    if !disk.admit() {
        return ffi::SQLITE_IOERR_DELETE;
    }
    let rc = real();
    if rc == ffi::SQLITE_OK || rc == ffi::SQLITE_IOERR_DELETE_NOENT {
        disk.files.remove(&tracked.path);
    }
    rc
}

unsafe extern "C" fn shim_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a handle shim_open opened, once.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: as above; the tracked Box is ours and freed exactly once here.
    unsafe {
        let shim = file.cast::<ShimFile>();
        if !(*shim).tracked.is_null() {
            drop(Box::from_raw((*shim).tracked));
            (*shim).tracked = ptr::null_mut();
        }
        real_method!(real, xClose)(real)
    }
}

unsafe extern "C" fn shim_read(
    file: *mut ffi::sqlite3_file,
    buf: *mut c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xRead)(real, buf, amount, offset) }
}

unsafe extern "C" fn shim_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, tracked) = unsafe { parts(file) };
    change(
        tracked,
        ffi::SQLITE_IOERR_WRITE,
        // SAFETY: forwarded with SQLite's own arguments.
        || unsafe { real_method!(real, xWrite)(real, buf, amount, offset) },
        || Pending::Write {
            offset: usize::try_from(offset).expect("non-negative offset"),
            // SAFETY: SQLite passes `amount` readable bytes at `buf`.
            data: unsafe {
                std::slice::from_raw_parts(
                    buf.cast::<u8>(),
                    usize::try_from(amount).expect("non-negative length"),
                )
            }
            .to_vec(),
        },
    )
}

unsafe extern "C" fn shim_truncate(
    file: *mut ffi::sqlite3_file,
    size: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, tracked) = unsafe { parts(file) };
    change(
        tracked,
        ffi::SQLITE_IOERR_TRUNCATE,
        // SAFETY: forwarded with SQLite's own arguments.
        || unsafe { real_method!(real, xTruncate)(real, size) },
        || Pending::Truncate(usize::try_from(size).expect("non-negative size")),
    )
}

unsafe extern "C" fn shim_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, tracked) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    let real_sync = || unsafe { real_method!(real, xSync)(real, flags) };
    let Some(tracked) = tracked else {
        return real_sync();
    };
    let mut disks = disks();
    let Some(disk) = disks.get_mut(&tracked.disk) else {
        drop(disks);
        return real_sync();
    };
    if !disk.admit() {
        return ffi::SQLITE_IOERR_FSYNC;
    }
    if disk.model.makes_durable(flags) {
        disk.files
            .entry(tracked.path.clone())
            .or_default()
            .make_durable();
    }
    // The durable image is the shim's; the real fsync would only be slow.
    ffi::SQLITE_OK
}

unsafe extern "C" fn shim_file_size(
    file: *mut ffi::sqlite3_file,
    size: *mut ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xFileSize)(real, size) }
}

unsafe extern "C" fn shim_lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xLock)(real, level) }
}

unsafe extern "C" fn shim_unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xUnlock)(real, level) }
}

unsafe extern "C" fn shim_check_reserved_lock(
    file: *mut ffi::sqlite3_file,
    out: *mut c_int,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xCheckReservedLock)(real, out) }
}

unsafe extern "C" fn shim_file_control(
    file: *mut ffi::sqlite3_file,
    op: c_int,
    arg: *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xFileControl)(real, op, arg) }
}

unsafe extern "C" fn shim_sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xSectorSize)(real) }
}

unsafe extern "C" fn shim_device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xDeviceCharacteristics)(real) }
}

unsafe extern "C" fn shim_shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xShmMap)(real, region, size, extend, out) }
}

unsafe extern "C" fn shim_shm_lock(
    file: *mut ffi::sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xShmLock)(real, offset, n, flags) }
}

unsafe extern "C" fn shim_shm_barrier(file: *mut ffi::sqlite3_file) {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xShmBarrier)(real) }
}

unsafe extern "C" fn shim_shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    // SAFETY: SQLite calls methods on open handles only.
    let (real, _) = unsafe { parts(file) };
    // SAFETY: forwarded with SQLite's own arguments.
    unsafe { real_method!(real, xShmUnmap)(real, delete) }
}

static SHIM_IO: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: IO_METHODS_VERSION,
    xClose: Some(shim_close),
    xRead: Some(shim_read),
    xWrite: Some(shim_write),
    xTruncate: Some(shim_truncate),
    xSync: Some(shim_sync),
    xFileSize: Some(shim_file_size),
    xLock: Some(shim_lock),
    xUnlock: Some(shim_unlock),
    xCheckReservedLock: Some(shim_check_reserved_lock),
    xFileControl: Some(shim_file_control),
    xSectorSize: Some(shim_sector_size),
    xDeviceCharacteristics: Some(shim_device_characteristics),
    xShmMap: Some(shim_shm_map),
    xShmLock: Some(shim_shm_lock),
    xShmBarrier: Some(shim_shm_barrier),
    xShmUnmap: Some(shim_shm_unmap),
    xFetch: None,
    xUnfetch: None,
};
