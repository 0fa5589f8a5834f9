//! One throwaway `redis-server` process.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::free_port;
use crate::tls::{CA_FILE, CERT_FILE, KEY_FILE, TlsMaterial};

/// How long a server gets to answer `PING` after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a fresh start retries with new ports when the chosen port was taken.
const START_ATTEMPTS: usize = 5;
/// Name of the log file inside the server's temporary directory.
const LOG_FILE: &str = "redis.log";

/// The `redis-server` binary: `$LARDER_REDIS_SERVER` or `redis-server` on `PATH`.
fn server_binary() -> OsString {
    std::env::var_os("LARDER_REDIS_SERVER").unwrap_or_else(|| "redis-server".into())
}

/// The `redis-cli` binary: `$LARDER_REDIS_CLI` or `redis-cli` on `PATH`.
fn cli_binary() -> OsString {
    std::env::var_os("LARDER_REDIS_CLI").unwrap_or_else(|| "redis-cli".into())
}

/// An ACL user added with [`RedisServerBuilder::acl_user`].
#[derive(Clone, Debug)]
struct AclUser {
    name: String,
    password: String,
    rules: String,
}

/// Credentials used by [`RedisServer::cli`], [`RedisServer::url`] and the readiness check.
#[derive(Clone, Debug)]
enum Admin {
    /// The default user, without a password.
    Default,
    /// The default user with the `requirepass` password.
    Password(String),
    /// A named ACL user.
    User { name: String, password: String },
}

/// Configures a [`RedisServer`] before it starts; made by [`RedisServer::builder`].
///
/// ```no_run
/// use larder_testkit::RedisServer;
///
/// let server = RedisServer::builder()
///     .arg("--maxmemory")
///     .arg("1mb")
///     .acl_user("app", "secret", "+@all -@dangerous ~* &*")
///     .start();
/// let url = server.url_for("app", "secret");
/// # let _ = url;
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `start` is called"]
pub struct RedisServerBuilder {
    args: Vec<String>,
    users: Vec<AclUser>,
    requirepass: Option<String>,
    disable_default_user: bool,
    cluster_enabled: bool,
    tls: bool,
}

impl RedisServerBuilder {
    /// Appends one extra command-line argument for `redis-server`, after the ones this crate
    /// sets (so it wins over them), e.g. `.arg("--maxmemory").arg("1mb")`.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Appends several extra command-line arguments, as [`arg`](Self::arg) does.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds an enabled ACL user `name` with `password` and the whitespace-separated ACL
    /// `rules`, e.g. `"+@all -@dangerous ~* &*"`. The default user stays enabled (without a
    /// password) unless [`requirepass`](Self::requirepass) or
    /// [`disable_default_user`](Self::disable_default_user) is also set.
    ///
    /// Connect as this user with [`RedisServer::url_for`] or [`RedisServer::cli_as`].
    pub fn acl_user(mut self, name: &str, password: &str, rules: &str) -> Self {
        self.users.push(AclUser {
            name: name.to_owned(),
            password: password.to_owned(),
            rules: rules.to_owned(),
        });
        self
    }

    /// Requires `password` for the default user (`--requirepass`). [`RedisServer::cli`] and
    /// [`RedisServer::url`] then authenticate with it.
    pub fn requirepass(mut self, password: &str) -> Self {
        self.requirepass = Some(password.to_owned());
        self
    }

    /// Disables the default user (`user default off`). At least one
    /// [`acl_user`](Self::acl_user) must be added; [`RedisServer::cli`] and
    /// [`RedisServer::url`] then use the first one.
    pub fn disable_default_user(mut self) -> Self {
        self.disable_default_user = true;
        self
    }

    /// Starts the server in cluster mode (`--cluster-enabled yes` with `nodes.conf` in its
    /// temporary directory, a 2000 ms node timeout and a cluster bus on a second free port).
    /// The node owns no slots; [`RedisCluster`](crate::RedisCluster) builds a working cluster.
    pub fn cluster_enabled(mut self, enabled: bool) -> Self {
        self.cluster_enabled = enabled;
        self
    }

    /// Also serves TLS on a second free port.
    ///
    /// A throwaway CA and a server certificate it signed (for IP `127.0.0.1` and DNS
    /// `localhost`) are generated for this server and written into its temporary directory;
    /// `redis-server` then runs with `--tls-port`, `--tls-cert-file`, `--tls-key-file`,
    /// `--tls-ca-cert-file` and `--tls-auth-clients no` (clients need no certificate). The plain
    /// port stays open, so [`url`](RedisServer::url), [`cli`](RedisServer::cli) and the
    /// readiness check work as before. Connect over TLS with [`RedisServer::tls_url`], trusting
    /// [`RedisServer::ca_cert_pem`]; every TLS server has its own CA.
    ///
    /// ```no_run
    /// use larder_testkit::RedisServer;
    ///
    /// let server = RedisServer::builder().tls().start();
    /// let url = server.tls_url().unwrap(); // rediss://127.0.0.1:PORT/
    /// let ca = server.ca_cert_pem().unwrap(); // PEM, for the client's root store
    /// # let _ = (url, ca);
    /// ```
    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Starts the server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` cannot be run (with a message saying how to install it), if
    /// [`disable_default_user`](Self::disable_default_user) was set without an ACL user, or
    /// if the server does not answer within 10 s (the message includes its log).
    pub fn start(self) -> RedisServer {
        let admin = self.admin();
        // One set of certificates, whatever the number of attempts.
        let material = self.tls.then(TlsMaterial::generate);
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let dir = tempfile::Builder::new()
                .prefix("larder-redis-")
                .tempdir()
                .expect("create a temporary directory for redis-server");
            let port = free_port();
            let other_port = |taken: &[u16]| loop {
                let candidate = free_port();
                if !taken.contains(&candidate) {
                    break candidate;
                }
            };
            let bus_port = self.cluster_enabled.then(|| other_port(&[port]));
            let tls = material.as_ref().map(|material| {
                material
                    .write_to(dir.path())
                    .expect("write the TLS certificates into the server's directory");
                let taken: Vec<u16> = std::iter::once(port).chain(bus_port).collect();
                Tls {
                    port: other_port(&taken),
                    ca_pem: material.ca_pem.clone().into_bytes(),
                }
            });
            let args = self.command_line(&dir, port, bus_port, tls.as_ref().map(|t| t.port));
            let mut server = RedisServer {
                port,
                bus_port,
                tls,
                args,
                admin: admin.clone(),
                child: Mutex::new(None),
                dir,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(error) if error.contains("Address already in use") => {
                    // Another process took the port between `free_port` and the bind.
                    server.stop();
                    last_error = error;
                }
                Err(error) => panic!("{error}"),
            }
        }
        panic!("redis-server could not get a free port in {START_ATTEMPTS} attempts: {last_error}");
    }

    fn admin(&self) -> Admin {
        if self.disable_default_user {
            let user = self.users.first().expect(
                "RedisServerBuilder::disable_default_user needs at least one acl_user to connect with",
            );
            Admin::User {
                name: user.name.clone(),
                password: user.password.clone(),
            }
        } else if let Some(password) = &self.requirepass {
            Admin::Password(password.clone())
        } else {
            Admin::Default
        }
    }

    fn command_line(
        &self,
        dir: &TempDir,
        port: u16,
        bus_port: Option<u16>,
        tls_port: Option<u16>,
    ) -> Vec<String> {
        let dir_path = dir
            .path()
            .to_str()
            .expect("temporary directory path is UTF-8");
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--daemonize",
            "no",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir_path,
            "--logfile",
            LOG_FILE,
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(bus_port) = bus_port {
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    "--cluster-port",
                    &bus_port.to_string(),
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
        }
        if let Some(tls_port) = tls_port {
            let file = |name: &str| {
                dir.path()
                    .join(name)
                    .to_str()
                    .expect("temporary directory path is UTF-8")
                    .to_owned()
            };
            args.extend([
                "--tls-port".to_owned(),
                tls_port.to_string(),
                "--tls-cert-file".to_owned(),
                file(CERT_FILE),
                "--tls-key-file".to_owned(),
                file(KEY_FILE),
                "--tls-ca-cert-file".to_owned(),
                file(CA_FILE),
                "--tls-auth-clients".to_owned(),
                "no".to_owned(),
            ]);
        }
        if let Some(password) = &self.requirepass {
            args.push("--requirepass".to_owned());
            args.push(password.clone());
        }
        for user in &self.users {
            args.push("--user".to_owned());
            args.push(user.name.clone());
            args.push("on".to_owned());
            args.push(format!(">{}", user.password));
            args.extend(user.rules.split_whitespace().map(str::to_owned));
        }
        if self.disable_default_user {
            args.extend(["--user", "default", "off"].map(str::to_owned));
        }
        args.extend(self.args.iter().cloned());
        args
    }
}

/// A running child process and the watchdog that kills it if the test process dies.
#[derive(Debug)]
struct Running {
    server: Child,
    watchdog: Option<Child>,
}

impl Running {
    fn kill(mut self) {
        // SIGKILL also ends a stopped (paused) process.
        let _ = self.server.kill();
        let _ = self.server.wait();
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// The TLS side of a server built with [`RedisServerBuilder::tls`].
#[derive(Debug)]
struct Tls {
    port: u16,
    ca_pem: Vec<u8>,
}

/// The user of [`RedisServer::restricted`].
pub const RESTRICTED_USER: &str = "larder";
/// The password of [`RESTRICTED_USER`].
pub const RESTRICTED_PASSWORD: &str = "larder-s3cret";
/// The ACL rules of [`RESTRICTED_USER`]: all keys and channels, all commands but `@dangerous`.
pub const RESTRICTED_RULES: &str = "~* &* +@all -@dangerous";

/// One `redis-server` process on a free loopback port, with its own temporary directory and
/// no persistence. It is killed when dropped.
///
/// See the [crate docs](crate) for how processes are cleaned up.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    bus_port: Option<u16>,
    tls: Option<Tls>,
    args: Vec<String>,
    admin: Admin,
    child: Mutex<Option<Running>>,
    // Declared last so it is removed after the process is gone (see `Drop`).
    dir: TempDir,
}

impl RedisServer {
    /// Starts a plain server (no auth, no cluster) and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed or does not come up within 10 s; see
    /// [`RedisServerBuilder::start`].
    pub fn start() -> RedisServer {
        Self::builder().start()
    }

    /// Starts a server locked down as a production Redis often is: the default user is off
    /// and the only user, `larder` (password [`RESTRICTED_PASSWORD`]), may run everything
    /// but `@dangerous` commands (no `KEYS`, `FLUSHALL`, `FLUSHDB`, `DEBUG`, `CONFIG`, ...).
    /// [`url`](Self::url) and [`cli`](Self::cli) connect as that user.
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start) does.
    pub fn restricted() -> RedisServer {
        Self::builder()
            .acl_user(
                RESTRICTED_USER,
                RESTRICTED_PASSWORD,
                "~* &* +@all -@dangerous",
            )
            .disable_default_user()
            .start()
    }

    /// A builder for a server with extra arguments, ACL users, a password, TLS or cluster mode.
    pub fn builder() -> RedisServerBuilder {
        RedisServerBuilder::default()
    }

    /// The TCP port the server listens on (the same across [`restart`](Self::restart)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster bus port (`--cluster-port`) of a server built with
    /// [`cluster_enabled(true)`](RedisServerBuilder::cluster_enabled), else `None`.
    pub fn cluster_bus_port(&self) -> Option<u16> {
        self.bus_port
    }

    /// The server's address, `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// A connection URL: `redis://127.0.0.1:PORT/`.
    ///
    /// If the server was built with [`requirepass`](RedisServerBuilder::requirepass) it is
    /// `redis://:PASSWORD@127.0.0.1:PORT/`; with
    /// [`disable_default_user`](RedisServerBuilder::disable_default_user) it carries the
    /// first ACL user's credentials. For any ACL user use [`url_for`](Self::url_for).
    pub fn url(&self) -> String {
        self.admin_url("redis", self.port)
    }

    /// The TLS port (`--tls-port`) of a server built with [`tls`](RedisServerBuilder::tls),
    /// else `None`. Like [`port`](Self::port), it is the same across [`restart`](Self::restart).
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|tls| tls.port)
    }

    /// The TLS connection URL of a server built with [`tls`](RedisServerBuilder::tls):
    /// `rediss://127.0.0.1:TLSPORT/`, with the same credentials as [`url`](Self::url); `None`
    /// without TLS. A client must trust [`ca_cert_pem`](Self::ca_cert_pem) to connect.
    pub fn tls_url(&self) -> Option<String> {
        let port = self.tls_port()?;
        Some(self.admin_url("rediss", port))
    }

    /// The PEM certificate of the throwaway CA that signed the TLS certificate of a server
    /// built with [`tls`](RedisServerBuilder::tls) (the same across
    /// [`restart`](Self::restart)); `None` without TLS. No other server's certificate is
    /// signed by it.
    pub fn ca_cert_pem(&self) -> Option<&[u8]> {
        self.tls.as_ref().map(|tls| tls.ca_pem.as_slice())
    }

    /// A URL with `scheme` and `port` and the credentials [`url`](Self::url) documents.
    fn admin_url(&self, scheme: &str, port: u16) -> String {
        match &self.admin {
            Admin::Default => format!("{scheme}://127.0.0.1:{port}/"),
            Admin::Password(password) => {
                format!(
                    "{scheme}://:{}@127.0.0.1:{port}/",
                    encode_userinfo(password)
                )
            }
            Admin::User { name, password } => format!(
                "{scheme}://{}:{}@127.0.0.1:{port}/",
                encode_userinfo(name),
                encode_userinfo(password)
            ),
        }
    }

    /// [`url`](Self::url) (with its credentials) pointing at `addr` instead, e.g. a
    /// [`Proxy`](crate::Proxy) in front of this server.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        self.url()
            .replace(&format!("127.0.0.1:{}", self.port), &addr.to_string())
    }

    /// A connection URL that authenticates as `user`:
    /// `redis://USER:PASSWORD@127.0.0.1:PORT/` (both percent-encoded as needed).
    pub fn url_for(&self, user: &str, password: &str) -> String {
        format!(
            "redis://{}:{}@127.0.0.1:{}/",
            encode_userinfo(user),
            encode_userinfo(password),
            self.port
        )
    }

    /// Kills the server (`SIGKILL`) and waits for it. The port is released, and connecting
    /// to it is refused until [`restart`](Self::restart). Does nothing if already stopped.
    pub fn stop(&mut self) {
        if let Some(running) = self.lock_child().take() {
            running.kill();
        }
    }

    /// Starts the server again on the **same** port with the same arguments and temporary
    /// directory (a cluster node keeps its `nodes.conf`, a TLS server its TLS port and
    /// certificates), and waits until it answers `PING`.
    /// A running server is stopped first.
    ///
    /// # Panics
    ///
    /// If the server does not come up within 10 s (for example because another process took
    /// the port meanwhile); the message includes the server's log.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(error) = self.spawn_and_wait() {
            panic!("{error}");
        }
    }

    /// Freezes the server with `SIGSTOP`: connections stay open, but nothing is answered
    /// until [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a [`pause`](Self::pause)d server run again (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Whether the server process is alive (a paused server is alive).
    pub fn is_running(&self) -> bool {
        let mut child = self.lock_child();
        match child.as_mut() {
            Some(running) => matches!(running.server.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The operating system's process id of the server, if it was started and not stopped.
    pub fn pid(&self) -> Option<u32> {
        self.lock_child()
            .as_ref()
            .map(|running| running.server.id())
    }

    /// The server's temporary directory (its working directory, log, `nodes.conf` and TLS
    /// certificates).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    /// Runs `redis-cli -h 127.0.0.1 -p PORT ARGS...` (authenticated like [`url`](Self::url))
    /// and returns its standard output, e.g. `"PONG\n"`.
    ///
    /// The output is redis-cli's raw (non-terminal) format; error replies such as
    /// `NOPERM ...` appear in it too. If redis-cli cannot connect, the output is empty (see
    /// [`cli_output`](Self::cli_output) for its standard error and exit status).
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot be run or cannot authenticate.
    pub fn cli(&self, args: &[&str]) -> String {
        String::from_utf8_lossy(&self.cli_output(args).stdout).into_owned()
    }

    /// How many times the server has run `command` (lower case, e.g. `"mget"`), from its
    /// `INFO commandstats`; 0 if it never has. `INFO` is a `@dangerous` command: not for a
    /// [`restricted`](Self::restricted) server.
    pub fn command_calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.cli(&["INFO", "commandstats"])
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .and_then(|rest| rest.split(',').next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Runs `redis-cli` as ACL user `user` (`--user USER --pass PASSWORD`) and returns its
    /// standard output, as [`cli`](Self::cli) does.
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot be run or authentication fails (`WRONGPASS`): redis-cli itself
    /// would silently go on as the default user.
    pub fn cli_as(&self, user: &str, password: &str, args: &[&str]) -> String {
        let mut command = self.cli_command();
        command
            .args(["--user", user, "--pass", password])
            .args(args);
        String::from_utf8_lossy(&run(command).stdout).into_owned()
    }

    /// Runs `redis-cli` as [`cli`](Self::cli) does and returns its whole output (standard
    /// output, standard error and exit status).
    ///
    /// # Panics
    ///
    /// If `redis-cli` cannot be run or cannot authenticate.
    pub fn cli_output(&self, args: &[&str]) -> Output {
        let mut command = self.cli_command();
        match &self.admin {
            Admin::Default => {}
            Admin::Password(password) => {
                command.args(["-a", password]);
            }
            Admin::User { name, password } => {
                command.args(["--user", name, "--pass", password]);
            }
        }
        command.args(args);
        run(command)
    }

    fn cli_command(&self) -> Command {
        let mut command = Command::new(cli_binary());
        command
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("--no-auth-warning")
            .stdin(Stdio::null());
        command
    }

    fn signal(&self, signal: &str) {
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("redis-server on port {} is not running", self.port));
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap_or_else(|e| panic!("run `kill {signal} {pid}`: {e}"));
        assert!(status.success(), "`kill {signal} {pid}` failed: {status}");
    }

    fn lock_child(&self) -> MutexGuard<'_, Option<Running>> {
        self.child.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns the process with `self.args` and waits until it answers `PING`. On failure the
    /// process is killed and the error message includes the log.
    fn spawn_and_wait(&mut self) -> Result<(), String> {
        // Start each run with a fresh log, so an error quotes only this run.
        let _ = std::fs::remove_file(self.dir.path().join(LOG_FILE));
        let mut server = Command::new(server_binary())
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                if e.kind() == ErrorKind::NotFound {
                    panic!(
                        "redis-server was not found ({:?}): install it (Debian/Ubuntu: \
                         `apt-get install redis-server`) or set LARDER_REDIS_SERVER to its path",
                        server_binary()
                    )
                }
                panic!("could not run redis-server ({:?}): {e}", server_binary())
            });
        let watchdog = spawn_watchdog(server.id());
        let deadline = Instant::now() + READY_TIMEOUT;
        let outcome = loop {
            if let Ok(Some(status)) = server.try_wait() {
                let mut stderr = String::new();
                if let Some(mut pipe) = server.stderr.take() {
                    let _ = pipe.read_to_string(&mut stderr);
                }
                break Err(format!("exited with {status}; stderr: {stderr}"));
            }
            if ping(self.addr(), Duration::from_millis(500)) {
                break Ok(());
            }
            if Instant::now() >= deadline {
                break Err(format!("did not answer PING within {READY_TIMEOUT:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let running = Running { server, watchdog };
        match outcome {
            Ok(()) => {
                *self.lock_child() = Some(running);
                Ok(())
            }
            Err(reason) => {
                running.kill();
                Err(format!(
                    "redis-server on 127.0.0.1:{} {reason}\nargs: {:?}\n--- {} ---\n{}",
                    self.port,
                    self.args,
                    self.dir.path().join(LOG_FILE).display(),
                    self.log()
                ))
            }
        }
    }
}

impl Drop for RedisServer {
    /// Kills the server (`SIGKILL`), waits for it, then removes its temporary directory.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs a prepared `redis-cli` command and collects its output.
///
/// redis-cli only warns when `AUTH` fails and then goes on as the default user, which would
/// make permission assertions pass or fail for the wrong reason, so that panics here.
fn run(mut command: Command) -> Output {
    let output = command.output().unwrap_or_else(|e| {
        panic!(
            "could not run redis-cli ({:?}): {e}; install it (Debian/Ubuntu: `apt-get install \
             redis-tools`) or set LARDER_REDIS_CLI to its path",
            cli_binary()
        )
    });
    let stderr = String::from_utf8_lossy(&output.stderr);
    if let Some(line) = stderr.lines().find(|line| line.contains("AUTH failed")) {
        panic!("redis-cli could not authenticate: {line}");
    }
    output
}

/// Starts `sh`, which waits for end-of-file on a pipe whose write end only this process
/// holds, then kills `pid`. The pipe closes when this process exits in any way, so the server
/// cannot outlive it. Returns `None` if `sh` cannot be started (the server then relies on
/// `Drop` alone).
fn spawn_watchdog(pid: u32) -> Option<Child> {
    Command::new("sh")
        .args([
            "-c",
            "read _unused; kill -9 \"$0\" 2>/dev/null",
            &pid.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
}

/// Sends a raw `PING` and reports whether the server answered like a working server would:
/// `+PONG`, or an authentication error when it requires credentials.
fn ping(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    if stream.set_read_timeout(Some(timeout)).is_err()
        || stream.set_write_timeout(Some(timeout)).is_err()
        || stream.write_all(b"*1\r\n$4\r\nPING\r\n").is_err()
    {
        return false;
    }
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    while !reply.ends_with(b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
        }
    }
    reply.starts_with(b"+PONG") || reply.starts_with(b"-NOAUTH") || reply.starts_with(b"-NOPERM")
}

/// Percent-encodes everything but RFC 3986 unreserved characters, for a URL's user info.
fn encode_userinfo(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::encode_userinfo;

    #[test]
    fn userinfo_is_percent_encoded() {
        assert_eq!(encode_userinfo("plain-user_1.x~"), "plain-user_1.x~");
        assert_eq!(encode_userinfo("p@ss:w/rd"), "p%40ss%3Aw%2Frd");
    }
}
