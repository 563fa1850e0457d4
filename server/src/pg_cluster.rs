//! A throwaway PostgreSQL 15 cluster for tests (feature `pg-cluster`, and
//! this crate's own tests): `initdb` in a fresh temporary directory, a
//! server on a free loopback port, a database per test, everything stopped
//! and removed on drop.
//!
//! The binaries come from `$OMNISYNC_PG_BIN` or `/usr/lib/postgresql/15/bin`
//! (Debian's `postgresql-15`; `.ci/ensure-postgres` installs it). `initdb`
//! refuses to run as root, so as root the cluster runs as `nobody`.
//!
//! Tests of one binary share a cluster through [`PgCluster::shared`]: it
//! lives while some test holds it, and each test asks for a database of its
//! own with [`PgCluster::create_database`].

use std::net::TcpListener;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// Where Debian's PostgreSQL 15 keeps its binaries.
pub const PG_BIN_DEFAULT: &str = "/usr/lib/postgresql/15/bin";
/// Environment variable naming another binary directory.
pub const PG_BIN_ENV: &str = "OMNISYNC_PG_BIN";
/// The superuser of every test cluster.
pub const SUPERUSER: &str = "postgres";
/// The user and group id the cluster runs as when the tests run as root.
const NOBODY: u32 = 65534;
/// Attempts at starting (a free port may be taken between pick and bind).
const START_ATTEMPTS: usize = 3;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);
static SHARED: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());

/// A running test cluster.
#[derive(Debug)]
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    password: String,
    run_as: Option<u32>,
}

impl PgCluster {
    /// The cluster of this test binary: the running one if a test holds
    /// it, else a new one.
    pub fn shared() -> Result<Arc<PgCluster>, String> {
        let mut shared = SHARED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(cluster) = shared.upgrade() {
            return Ok(cluster);
        }
        let cluster = Arc::new(Self::start()?);
        *shared = Arc::downgrade(&cluster);
        Ok(cluster)
    }

    /// Makes and starts a new cluster with a database named `omnisync`.
    pub fn start() -> Result<PgCluster, String> {
        let bin = bin_dir()?;
        let mut last = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::start_in(&bin) {
                Ok(cluster) => {
                    cluster.create_database("omnisync")?;
                    return Ok(cluster);
                }
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    fn start_in(bin: &Path) -> Result<PgCluster, String> {
        let run_as = running_as_root().then_some(NOBODY);
        // As root the server runs as `nobody`, who must reach the directory:
        // /tmp, whatever TMPDIR says (it may lie under a private home).
        let base = if run_as.is_some() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "omnisync-pg-{}-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|error| format!("creating {}: {error}", dir.display()))?;
        let password = format!("pw{:016x}", rand::random::<u64>());
        let cluster = PgCluster {
            bin: bin.to_path_buf(),
            dir,
            port: free_port()?,
            password,
            run_as,
        };
        let password_file = cluster.dir.join("password");
        std::fs::write(&password_file, &cluster.password)
            .map_err(|error| format!("writing {}: {error}", password_file.display()))?;
        if let Some(id) = run_as {
            std::os::unix::fs::chown(&cluster.dir, Some(id), Some(id))
                .and_then(|()| std::os::unix::fs::chown(&password_file, Some(id), Some(id)))
                .map_err(|error| format!("chown {}: {error}", cluster.dir.display()))?;
        }
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                cluster.data_dir().as_os_str(),
                "-U".as_ref(),
                SUPERUSER.as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                password_file.as_os_str(),
                "--no-sync".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
            ],
        )?;
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c fsync=on -c max_connections=200",
            cluster.port,
            cluster.dir.display()
        );
        cluster.run(
            "pg_ctl",
            &[
                "start".as_ref(),
                "-w".as_ref(),
                "-D".as_ref(),
                cluster.data_dir().as_os_str(),
                "-l".as_ref(),
                cluster.dir.join("server.log").as_os_str(),
                "-o".as_ref(),
                options.as_ref(),
            ],
        )?;
        Ok(cluster)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs one of the cluster's binaries (as `nobody` when root), failing
    /// with its output.
    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) -> Result<(), String> {
        let mut command = Command::new(self.bin.join(program));
        command
            .args(args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        if let Some(id) = self.run_as {
            command.uid(id).gid(id);
        }
        let output = command
            .output()
            .map_err(|error| format!("running {program}: {error}"))?;
        if output.status.success() {
            return Ok(());
        }
        Err(format!(
            "{program} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }

    /// The directory of the PostgreSQL programs (`pg_dump`, `pg_restore`, …).
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL of the `omnisync` database, as the superuser.
    pub fn url(&self) -> String {
        self.url_of("omnisync")
    }

    /// The URL of database `name`, as the superuser.
    pub fn url_of(&self, name: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "database name {name:?}: letters, digits and _ only"
            ));
        }
        self.execute("postgres", &format!("CREATE DATABASE {name}"))?;
        Ok(self.url_of(name))
    }

    /// Runs `sql` (simple protocol) in database `database` as the superuser.
    pub fn execute(&self, database: &str, sql: &str) -> Result<(), String> {
        let url = self.url_of(database);
        let sql = sql.to_owned();
        crate::storage::postgres::off_runtime(move || {
            let mut client = postgres::Client::connect(&url, postgres::NoTls)
                .map_err(|error| crate::storage::postgres::describe(&error))?;
            client
                .batch_execute(&sql)
                .map_err(|error| crate::storage::postgres::describe(&error))
        })
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self.run(
            "pg_ctl",
            &[
                "stop".as_ref(),
                "-m".as_ref(),
                "immediate".as_ref(),
                "-D".as_ref(),
                data.as_os_str(),
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The binary directory, or how to get one.
fn bin_dir() -> Result<PathBuf, String> {
    let bin = std::env::var_os(PG_BIN_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(PG_BIN_DEFAULT));
    if bin.join("initdb").is_file() && bin.join("pg_ctl").is_file() {
        return Ok(bin);
    }
    Err(format!(
        "PostgreSQL 15 binaries not found in {} (initdb, pg_ctl): install them with `apt-get install postgresql-15` (or run .ci/ensure-postgres), or set {PG_BIN_ENV}",
        bin.display()
    ))
}

/// True when this process runs as root (whose `/proc/self` it owns).
fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// A loopback port free right now.
fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .map_err(|error| format!("finding a free port: {error}"))
}
