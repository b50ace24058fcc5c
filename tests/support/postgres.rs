//! A private PostgreSQL server for tests that stop and start it: the machine's shared
//! server must not go down under the other tests. Its data directory, log and unix socket
//! live in a temporary directory; it listens on a free port of 127.0.0.1 and trusts every
//! local connection. PostgreSQL refuses to run as root: as root, its programs run as the
//! `postgres` OS user.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

/// Where the PostgreSQL programs are (overridden by `REELAY_TEST_POSTGRES_BIN`).
const DEFAULT_BIN: &str = "/usr/lib/postgresql/15/bin";
/// The OS user the server runs as when the tests run as root.
const OS_USER: &str = "postgres";

pub struct PrivatePostgres {
    bin: PathBuf,
    /// Holds `data`, `server.log` and the unix socket; removed on drop.
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl PrivatePostgres {
    /// Creates a cluster and starts it. `None` (after saying why) only when the
    /// PostgreSQL programs are not installed.
    pub async fn start() -> Option<PrivatePostgres> {
        let bin = std::env::var_os("REELAY_TEST_POSTGRES_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_BIN));
        if !bin.join("initdb").is_file() || !bin.join("pg_ctl").is_file() {
            eprintln!(
                "SKIPPED: no PostgreSQL programs in {} (set REELAY_TEST_POSTGRES_BIN): this test \
                 needs a private PostgreSQL server it may stop and start",
                bin.display()
            );
            return None;
        }
        let as_postgres = running_as_root();
        let dir = tempfile::tempdir().expect("temp dir");
        if as_postgres {
            let status = std::process::Command::new("chown")
                .args([&format!("{OS_USER}:"), path_str(dir.path())])
                .status()
                .expect("chown");
            assert!(status.success(), "chown the temp dir to {OS_USER}");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let server = PrivatePostgres {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = server.data();
        server
            .run(
                "initdb",
                &[
                    "-D",
                    path_str(&data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ],
            )
            .await;
        let settings = format!(
            "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
             fsync = off\nfull_page_writes = off\nmax_connections = 100\n",
            server.dir.path().display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push_str(&settings);
        std::fs::write(&conf, text).expect("write postgresql.conf");
        server.start_again().await;
        Some(server)
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server (fast: open connections are cut, as in a real restart) and
    /// waits until it is down.
    pub async fn stop(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data), "-m", "fast", "-w", "stop"],
        )
        .await;
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub async fn start_again(&self) {
        let (data, log) = (self.data(), self.dir.path().join("server.log"));
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await;
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the PostgreSQL programs (as the `postgres` user when root), and
    /// panics with its output and the server's log if it fails.
    async fn run(&self, program: &str, args: &[&str]) {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(&program);
            command
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap_or_else(|error| panic!("run {}: {error}", program.display()));
        if !output.status.success() {
            let log =
                std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
            panic!(
                "{} {args:?} failed ({}):\n{}{}\nserver log:\n{log}",
                program.display(),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr),
            );
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // Immediate: nothing of it is kept. Failing is fine (it may be stopped already).
        let pg_ctl = self.bin.join("pg_ctl");
        let data = self.data();
        let mut command = if self.as_postgres {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", OS_USER, "--"]).arg(&pg_ctl);
            command
        } else {
            std::process::Command::new(&pg_ctl)
        };
        let _ = command
            .args(["-D", path_str(&data), "-m", "immediate", "-w", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}
