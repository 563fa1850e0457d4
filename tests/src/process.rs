//! Child processes for crash scenarios: a guard that SIGKILLs and reaps its
//! child on drop (so a failing assertion never leaks a process), a line reader
//! for the child's stdout, and the real `omnisync-hub` binary on a fixed port.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;

/// How long a spawned hub may take to print its listening line.
pub const HUB_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Environment variable that points the scenarios at a prebuilt hub binary
/// instead of building `omnisync-hub` from the workspace.
pub const HUB_BIN_ENV: &str = "OMNISYNC_HUB_BIN";

/// A child process whose stdout is read line by line. Dropping the guard
/// kills the child with SIGKILL and reaps it.
pub struct ChildGuard {
    name: String,
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Spawns `command` with stdout (and stderr) piped. Every output line is
    /// echoed to the test's captured stderr with a `[name]` prefix, so it
    /// shows up when the test fails; stdout lines are also queued for
    /// [`ChildGuard::next_line`].
    pub fn spawn(name: &str, mut command: Command) -> anyhow::Result<Self> {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {name}: {command:?}"))?;
        let (sender, lines) = mpsc::unbounded_channel();
        // Both pipes are drained until EOF so that a chatty child never blocks
        // on a full pipe while the test is busy elsewhere.
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        let prefix = name.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{prefix}] {line}");
                let _ = sender.send(line);
            }
        });
        let prefix = name.to_owned();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{prefix} stderr] {line}");
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            lines,
            exited: None,
        })
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, or an error once `timeout` passes or the child
    /// closed its stdout.
    pub async fn next_line(&mut self, timeout: Duration) -> anyhow::Result<String> {
        match tokio::time::timeout(timeout, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => {
                let status = self.child.try_wait().ok().flatten();
                anyhow::bail!("{} closed its stdout (exit status {status:?})", self.name)
            }
            Err(_) => anyhow::bail!("{} printed nothing for {timeout:?}", self.name),
        }
    }

    /// Reads stdout lines until one satisfies `wanted`, and returns it.
    pub async fn wait_for_line(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .next_line(left)
                .await
                .with_context(|| format!("waiting {timeout:?} for a line from {}", self.name))?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }

    /// Kills the child with SIGKILL — no shutdown hook, no flush — and reaps it.
    pub fn kill(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.exited {
            return Ok(status);
        }
        // kill() fails only if the child already exited, which wait() reports.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.exited = Some(status);
        Ok(status)
    }

    /// Waits for the child to exit on its own, killing it after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exited = Some(status);
                return Ok(status);
            }
            if Instant::now() > deadline {
                self.kill()?;
                anyhow::bail!("{} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A free TCP port on 127.0.0.1: bound, read and released. Another process
/// could take it before the hub binds it; on a test machine that is rare.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The `omnisync-hub` binary of this workspace, built once per test process.
///
/// It lives in another package, so `CARGO_BIN_EXE_*` does not name it. The
/// test executable runs from `<target>/<profile>/deps/`, so the hub binary is
/// `<target>/<profile>/omnisync-hub`. `cargo build -p omnisync-hub` runs once
/// per test process even when the binary exists: it is a no-op when the
/// binary is fresh, and it keeps a scenario from silently testing a stale hub
/// while `server/` changes. Set [`HUB_BIN_ENV`] to use a prebuilt binary.
pub fn hub_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| locate_or_build_hub().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn locate_or_build_hub() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os(HUB_BIN_ENV) {
        let path = PathBuf::from(path);
        anyhow::ensure!(
            path.is_file(),
            "{HUB_BIN_ENV}={} is not a file",
            path.display()
        );
        return Ok(path);
    }
    workspace_binary("omnisync-hub", "omnisync-hub")
}

/// The `pos-demo` binary of this workspace, built once per test process
/// (like [`hub_binary`]).
pub fn pos_demo_binary() -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            workspace_binary("omnisync-pos", "pos-demo").map_err(|error| format!("{error:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Builds `bin` of `package` into the target directory and profile of this
/// test executable (`<target>/<profile>/deps/…`) and returns its path.
fn workspace_binary(package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    let deps = exe
        .parent()
        .context("test executable has no parent directory")?;
    let profile_dir = if deps.file_name().is_some_and(|name| name == "deps") {
        deps.parent().context("deps directory has no parent")?
    } else {
        deps
    };
    let binary = profile_dir.join(format!("{bin}{}", std::env::consts::EXE_SUFFIX));
    build_binary(profile_dir, package, bin)
        .with_context(|| format!("building {}", binary.display()))?;
    anyhow::ensure!(
        binary.is_file(),
        "cargo built {bin} but {} does not exist",
        binary.display()
    );
    Ok(binary)
}

fn build_binary(profile_dir: &Path, package: &str, bin: &str) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut command = Command::new(cargo);
    command
        .current_dir(&workspace)
        .args(["build", "--quiet", "-p", package, "--bin", bin]);
    // Build into the same target directory and profile as this test.
    if let Some(target_dir) = profile_dir.parent() {
        command.arg("--target-dir").arg(target_dir);
    }
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A real `omnisync-hub serve` process on a fixed loopback port.
pub struct HubProcess {
    /// The process (killed on drop).
    pub child: ChildGuard,
    /// `127.0.0.1:PORT`.
    pub address: std::net::SocketAddr,
}

impl HubProcess {
    /// Starts `binary serve --dev-auth --listen 127.0.0.1:port --data-dir
    /// data_dir` and waits until it prints its listening line.
    pub async fn start(binary: &Path, port: u16, data_dir: &Path) -> anyhow::Result<Self> {
        let hub = Self::start_with(binary, port, data_dir, &["--dev-auth"]).await?;
        hub.check_protocol().await.with_context(|| {
            format!(
                "{} does not speak this build's protocol (a stale binary?)",
                binary.display()
            )
        })?;
        Ok(hub)
    }

    /// Starts `binary serve --listen 127.0.0.1:port --data-dir data_dir`
    /// with `args` (authentication, TLS, limits) and waits until it prints
    /// its listening line.
    pub async fn start_with(
        binary: &Path,
        port: u16,
        data_dir: &Path,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(binary, port, data_dir, args, &[]).await
    }

    /// Like [`HubProcess::start`] (development authentication), with extra
    /// environment variables for the hub (a failpoint such as
    /// `OMNISYNC_FAILPOINT=crash-after-commit`); checks the hub speaks this
    /// build's protocol.
    pub async fn start_with_env(
        binary: &Path,
        port: u16,
        data_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let hub = Self::spawn(binary, port, data_dir, &["--dev-auth"], env).await?;
        hub.check_protocol().await.with_context(|| {
            format!(
                "{} does not speak this build's protocol (a stale binary?)",
                binary.display()
            )
        })?;
        Ok(hub)
    }

    /// Starts `binary serve --dev-auth --listen 127.0.0.1:port --database
    /// URL` (the hub log in PostgreSQL; several may share it) and checks it
    /// speaks this build's protocol.
    pub async fn start_postgres(binary: &Path, port: u16, database: &str) -> anyhow::Result<Self> {
        let storage = [std::ffi::OsStr::new("--database"), database.as_ref()];
        let hub = Self::spawn_on(binary, port, &storage, &["--dev-auth"], &[]).await?;
        hub.check_protocol().await?;
        Ok(hub)
    }

    async fn spawn(
        binary: &Path,
        port: u16,
        data_dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let storage = [std::ffi::OsStr::new("--data-dir"), data_dir.as_os_str()];
        Self::spawn_on(binary, port, &storage, args, env).await
    }

    async fn spawn_on(
        binary: &Path,
        port: u16,
        storage: &[&std::ffi::OsStr],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let address: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .args(args)
            .arg("--listen")
            .arg(address.to_string())
            .args(storage)
            .env(
                "RUST_LOG",
                std::env::var("OMNISYNC_HUB_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .envs(env.iter().copied());
        let mut child = ChildGuard::spawn("omnisync-hub", command)?;
        let expected = format!("omnisync-hub listening on {address}");
        child
            .wait_for_line(HUB_START_TIMEOUT, |line| line.starts_with(&expected))
            .await
            .context("waiting for the hub's listening line")?;
        Ok(Self { child, address })
    }

    /// Waits for the hub to exit on its own (a failpoint's abort) and
    /// returns its exit status; SIGKILLs it and fails after `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        self.child.wait_exit(timeout).await
    }

    /// Shakes hands with the hub as a throwaway device, so that a hub binary
    /// built from other sources than this test fails here, plainly, instead
    /// of as a sync timeout later.
    async fn check_protocol(&self) -> anyhow::Result<()> {
        use futures_util::{SinkExt as _, StreamExt as _};
        use omnisync_core::protocol::message::{
            self, ClientMessage, Credentials, Hello, HubMessage,
        };
        use tokio_tungstenite::tungstenite::Message;

        let hello = ClientMessage::Hello(Hello {
            device: omnisync_core::DeviceId::new("protocol-check")?,
            store: omnisync_core::StoreId::new("protocol-check")?,
            replica: omnisync_core::ReplicaId::random(),
            credentials: Credentials::default(),
            agent: "omnisync-tests protocol check".into(),
            versions: None,
            probe: None,
        });
        let handshake = async {
            let (mut socket, _) = tokio_tungstenite::connect_async(self.sync_url()).await?;
            socket
                .send(Message::Binary(message::encode(&hello).into()))
                .await?;
            let answer = socket
                .next()
                .await
                .context("the hub closed without answering")??;
            let Message::Binary(frame) = answer else {
                anyhow::bail!("the hub answered {answer:?}")
            };
            let welcome = message::decode::<HubMessage>(&frame)?;
            anyhow::ensure!(
                matches!(welcome, HubMessage::Welcome(_)),
                "expected Welcome, got {welcome:?}"
            );
            let _ = socket.close(None).await;
            Ok(())
        };
        tokio::time::timeout(HUB_START_TIMEOUT, handshake)
            .await
            .context("handshake timed out")?
    }

    /// The WebSocket URL devices use.
    pub fn sync_url(&self) -> String {
        format!("ws://{}/v1/sync", self.address)
    }

    /// SIGKILLs the hub: nothing in flight is flushed or answered.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        Ok(())
    }
}
