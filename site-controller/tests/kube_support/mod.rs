//! A real Kubernetes API server for integration tests: starts `kube-test-apiserver` (built
//! from Debian packages by `tests/kube-apiserver/build.sh`, see its README for how it differs
//! from kube-apiserver) on loopback with its own data folder, and hands out kube-rs clients
//! and kubectl commands for it.
//!
//! Use it from an integration test file that starts with `#![cfg(feature = "kubernetes")]`
//! and declares `mod kube_support;`:
//!
//! ```ignore
//! let Some(server) = kube_support::TestApiServer::start() else { return };
//! let client = server.client().await;
//! ```
//!
//! `start` returns `None` (and says why on stderr) when the server binary has not been built,
//! unless `SKIFF_REQUIRE_KUBE=1` is set (as CI does), in which case it panics.

// Each test binary uses its own subset of this module.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the server may take to answer `/readyz` after it is started.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of the server's log a failure message shows.
const LOG_TAIL_BYTES: u64 = 4000;

/// A running `kube-test-apiserver` with its own data folder, deleted on drop.
pub struct TestApiServer {
    child: Option<Child>,
    binary: PathBuf,
    data_dir: tempfile::TempDir,
    port: u16,
    kubeconfig: PathBuf,
    /// The server's stderr, appended to across restarts.
    log: PathBuf,
}

impl TestApiServer {
    /// Starts a server on a free loopback port and waits until it is ready.
    ///
    /// Returns `None` (with an eprintln saying why the test skips) when the binary is missing
    /// and `SKIFF_REQUIRE_KUBE` is unset; panics with the reason when `SKIFF_REQUIRE_KUBE=1`.
    pub fn start() -> Option<TestApiServer> {
        let binary = server_binary();
        if !binary.is_file() {
            let why = format!(
                "the test Kubernetes API server {} is missing; build it with `bash tests/kube-apiserver/build.sh` (or point SKIFF_KUBE_APISERVER at it)",
                binary.display()
            );
            if kube_required() {
                panic!("{why} (SKIFF_REQUIRE_KUBE is set, so this test must not skip)");
            }
            eprintln!("skipping: {why}");
            return None;
        }
        let data_dir = tempfile::Builder::new()
            .prefix("skiff-kube-")
            .tempdir()
            .expect("creating the API server's data folder");
        let kubeconfig = data_dir.path().join("kubeconfig");
        let log = data_dir.path().join("server.log");
        let mut server = TestApiServer {
            child: None,
            binary,
            data_dir,
            port: 0,
            kubeconfig,
            log,
        };
        server.spawn_and_wait();
        Some(server)
    }

    /// The kubeconfig the server wrote: its URL, CA, a token and namespace `default`.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The HTTPS port the server listens on (127.0.0.1); it stays the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A kube-rs client for the server, built from its kubeconfig (rustls, ring).
    pub async fn client(&self) -> kube::Client {
        // kube's rustls needs a process-wide provider; another test may have installed it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", self.kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("loading {}: {e}", self.kubeconfig.display()));
        kube::Client::try_from(config).expect("building a kube client")
    }

    /// Stops the server with SIGTERM (killing it if it takes longer than 20 s), starts it
    /// again on the same data folder and port, and waits until it is ready. Objects and their
    /// resourceVersions survive; open watches end.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn_and_wait();
    }

    /// Compacts the server's etcd to its current revision (`POST /skiff-test/compact`).
    /// After a restart, a watch from a resourceVersion older than the compaction gets
    /// 410 Gone.
    pub async fn compact(&self) {
        let client = self.client().await;
        let request = http::Request::post("/skiff-test/compact")
            .body(Vec::new())
            .expect("building the compact request");
        let answer = client
            .request_text(request)
            .await
            .unwrap_or_else(|e| panic!("POST /skiff-test/compact failed: {e}"));
        assert!(
            answer.contains("compactedRevision"),
            "unexpected answer to POST /skiff-test/compact: {answer}"
        );
    }

    /// A kubectl command with `--kubeconfig` set to this server's kubeconfig: the kubectl
    /// that build.sh unpacked (target/kube-apiserver/root/usr/bin/kubectl) if present, else
    /// `kubectl` from PATH.
    pub fn kubectl(&self) -> Command {
        let unpacked = workspace_dir().join("target/kube-apiserver/root/usr/bin/kubectl");
        let program = if unpacked.is_file() {
            unpacked
        } else {
            PathBuf::from("kubectl")
        };
        let mut command = Command::new(program);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// The last lines of the server's stderr, for failure messages.
    pub fn log_tail(&self) -> String {
        let Ok(mut file) = File::open(&self.log) else {
            return String::from("(no server log)");
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Starts the binary (on `self.port`, 0 the first time) and waits for its kubeconfig,
    /// which it writes only once `/readyz` answers ok.
    fn spawn_and_wait(&mut self) {
        // The server removes a stale kubeconfig itself, but only once it runs: remove it first
        // so the wait below cannot see the previous run's.
        let _ = std::fs::remove_file(&self.kubeconfig);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the server log");
        let child = Command::new(&self.binary)
            .arg("--data-dir")
            .arg(self.data_dir.path())
            .arg("--secure-port")
            .arg(self.port.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.binary.display()));
        self.child = Some(child);

        let started = Instant::now();
        loop {
            if let Ok(text) = std::fs::read_to_string(&self.kubeconfig) {
                self.port = port_in_kubeconfig(&text).unwrap_or_else(|| {
                    panic!("no https://127.0.0.1:PORT server in the kubeconfig:\n{text}")
                });
                return;
            }
            let child = self.child.as_mut().expect("just spawned");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                panic!(
                    "kube-test-apiserver exited ({status}) before it was ready; its log ends with:\n{}",
                    self.log_tail()
                );
            }
            if started.elapsed() > START_TIMEOUT {
                self.stop();
                panic!(
                    "kube-test-apiserver was not ready within {START_TIMEOUT:?}; its log ends with:\n{}",
                    self.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then wait; SIGKILL if it does not exit within STOP_TIMEOUT.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let asked = Instant::now();
        while asked.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "kube-test-apiserver did not exit within {STOP_TIMEOUT:?} of SIGTERM; killing it"
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for TestApiServer {
    /// Kills the server (by its PID) and waits for it; the data folder is deleted after.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The workspace root (the parent of this crate).
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is inside the workspace")
        .to_path_buf()
}

/// `SKIFF_KUBE_APISERVER`, else `<workspace>/target/kube-apiserver/kube-test-apiserver`.
fn server_binary() -> PathBuf {
    match std::env::var_os("SKIFF_KUBE_APISERVER") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => workspace_dir().join("target/kube-apiserver/kube-test-apiserver"),
    }
}

/// Whether tests must not skip for lack of the server (`SKIFF_REQUIRE_KUBE` set, not "0").
fn kube_required() -> bool {
    std::env::var("SKIFF_REQUIRE_KUBE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The port of the `server: https://127.0.0.1:PORT` line of a kubeconfig.
fn port_in_kubeconfig(text: &str) -> Option<u16> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("server: https://127.0.0.1:"))
        .find_map(|port| port.trim().parse().ok())
}
