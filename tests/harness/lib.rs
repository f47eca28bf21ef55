//! Harness for end-to-end tests: the real `rxgate` and `rxgate-sim` binaries, and real outside
//! peers (`openssl`, `curl`, `mosquitto`), on ephemeral loopback ports in temporary folders.
//!
//! Every test gets its own [`Gateway`] (its own data dir and ports), so tests run in parallel.
//! Waiting is always polling with a deadline ([`wait_until`]), never a bare sleep.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

pub mod cloud;
pub mod loopfs;

/// Path of a workspace binary, built (once per test process) if needed, in the same profile as
/// the running test.
pub fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let dir = BUILT.get_or_init(|| {
        // target/<profile>/deps/<test-exe>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable lives in target/<profile>/deps")
            .to_owned();
        let release = profile_dir.file_name().is_some_and(|n| n == "release");
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args([
            "build",
            "--quiet",
            "-p",
            "rxgate",
            "-p",
            "rxgate-sim",
            "--bins",
        ]);
        if release {
            cargo.arg("--release");
        }
        cargo.current_dir(env!("CARGO_MANIFEST_DIR"));
        // Cargo gives the test process the variables of *this* package; build scripts that
        // watch them (ring's watches CARGO_MANIFEST_DIR) would see a change and rebuild
        // everything. Run the inner cargo with the environment an ordinary build has.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if [
                "CARGO_PKG_",
                "CARGO_MANIFEST_",
                "CARGO_CRATE_",
                "CARGO_BIN_",
                "CARGO_PRIMARY_",
                "CARGO_TARGET_TMPDIR",
                "CARGO_RUSTC_CURRENT_DIR",
            ]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            {
                cargo.env_remove(name.as_ref());
            }
        }
        let status = cargo.status().expect("run cargo build for the binaries");
        assert!(
            status.success(),
            "cargo build of rxgate and rxgate-sim failed"
        );
        profile_dir
    });
    dir.join(name)
}

/// A benchmark's `--name VALUE` argument, or `default`.
pub fn bench_arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A number from `/proc/<pid>/<file>`: the value after `field` (`VmHWM:` in `status`, in KiB;
/// `write_bytes:` in `io`), or 0 when it cannot be read.
pub fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().to_owned())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of `pid`, in seconds (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) may hold spaces; count from after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    // rest starts at field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ticks as f64 / per_second
}

/// The operating-system user running the tests (`id -un`): the actor of every CLI command.
pub fn whoami() -> String {
    let output = Command::new("id").arg("-un").output().expect("run id -un");
    assert!(output.status.success(), "id -un failed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Polls `f` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = f() {
            return value;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A TCP connection to `to` from the loopback address `source`, as a silent LAN host would open.
pub fn tcp_from(source: [u8; 4], to: std::net::SocketAddr) -> std::io::Result<std::net::TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let stream = rt.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(std::net::SocketAddr::from((source, 0)))?;
        socket.connect(to).await?.into_std()
    })?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Writes the default policy into `dir` with its per-device event rate limit (2 a second,
/// bursts of 120) raised out of the way, for tests that flood events on purpose; returns its path.
pub fn policy_without_event_limit(dir: &Path) -> PathBuf {
    let default = std::fs::read_to_string(workspace().join("config/policy.toml"))
        .expect("the default policy");
    let unlimited = default.replace(
        "rate_limit = { per_second = 2.0, burst = 120 }",
        "rate_limit = { per_second = 1000.0, burst = 1000 }",
    );
    assert_ne!(
        unlimited, default,
        "the default policy's event rate limit moved"
    );
    let path = dir.join("policy.toml");
    std::fs::write(&path, unlimited).expect("write the policy");
    path
}

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a process that prints a `ready ...` line naming its port (`ready 5020`,
/// `ready tcp=127.0.0.1:5020 ...`) and returns it with that port.
pub fn start_ready(mut cmd: Command, what: &str) -> (Proc, u16) {
    use std::io::BufRead;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a ready line");
    let port = line
        .split_whitespace()
        .filter_map(|w| {
            w.strip_prefix("tcp=")
                .unwrap_or(w)
                .rsplit(':')
                .next()?
                .parse()
                .ok()
        })
        .next()
        .unwrap_or_else(|| panic!("{what} did not say where it listens: {line:?}"));
    (Proc(child), port)
}

/// A simulated fridge on a loopback port: 5 °C, time 600 times faster, the compressor failing
/// at once.
pub fn failing_fridge() -> (Proc, u16) {
    let mut cmd = Command::new(bin("rxgate-sim"));
    cmd.args([
        "fridge",
        "--tcp",
        "127.0.0.1:0",
        "--setpoint",
        "5",
        "--speed",
        "600",
    ])
    .args(["--fault", "compressor-failure@1s"]);
    start_ready(cmd, "rxgate-sim fridge")
}

/// The config of device `fridge-01`, the simulated fridge on `port`: polled every 500 ms, a
/// refrigerator profile, an alarm after 3 s out of range.
pub fn fridge_device_config(port: u16) -> String {
    format!(
        "[devices.fridge-01]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nmodel = \"{}\"\n\
         poll_interval = \"500ms\"\ntimeout = \"300ms\"\nprofile = \"refrigerator\"\nalarm_delay = \"3s\"\n",
        workspace().join("config/devices/acme-fr400.toml").display()
    )
}

/// Runs a command to completion, capturing its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Output as text, stdout then stderr, for assertion messages.
pub fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Runs `openssl` with `args` in `dir`; panics if it fails.
pub fn openssl(dir: &Path, args: &[&str]) -> Output {
    let output = run(Command::new("openssl").args(args).current_dir(dir));
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}",
        text(&output)
    );
    output
}

/// A gateway under test: config, data dir and the running `rxgate run` process.
pub struct Gateway {
    pub dir: TempDir,
    pub config: PathBuf,
    pub child: Option<Child>,
    /// EST listener.
    pub enroll: SocketAddr,
    /// Device MQTT listener.
    pub mqtt: SocketAddr,
    /// Metrics and health endpoint.
    pub metrics: SocketAddr,
    /// The pharmacy console (HTTPS).
    pub console: SocketAddr,
}

/// The default test config (loopback, ephemeral ports, trusted clock) with `extra` (TOML) merged
/// over it, key by key.
pub fn config_text(site: &str, extra: &str) -> String {
    let base = format!(
        "[gateway]\nsite = \"{site}\"\ndata_dir = \"data\"\nassume_clock_synced = true\n\
         [enroll]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\
         [console]\nlisten = \"127.0.0.1:0\"\n\
         [outbox]\nbatch_delay = \"5ms\"\n"
    );
    let mut base: toml::Table = base.parse().expect("base config");
    let extra: toml::Table = extra
        .parse()
        .unwrap_or_else(|e| panic!("extra config: {e}"));
    merge(&mut base, extra);
    base.to_string()
}

fn merge(into: &mut toml::Table, from: toml::Table) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

impl Gateway {
    /// Writes a config, runs `rxgate init`, but does not start the daemon.
    pub fn init(extra: &str) -> Gateway {
        Self::init_with(&config_text("store-0042", extra), &[])
    }

    /// Like [`Gateway::init`] with the whole config text and extra `init` arguments.
    pub fn init_with(config_text: &str, init_args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("gateway.toml");
        std::fs::write(&config, config_text).expect("write config");
        let gateway = Gateway {
            dir,
            config,
            child: None,
            enroll: SocketAddr::from(([127, 0, 0, 1], 0)),
            mqtt: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics: SocketAddr::from(([127, 0, 0, 1], 0)),
            console: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let output = gateway.cli(&[&["init"], init_args].concat());
        assert!(
            output.status.success(),
            "rxgate init failed: {}",
            text(&output)
        );
        gateway
    }

    /// Initialises and starts a gateway, returning once its listeners are up.
    pub fn start(extra: &str) -> Gateway {
        let mut gateway = Self::init(extra);
        gateway.spawn();
        gateway
    }

    /// Starts `rxgate run` and waits until the admin socket reports the listeners.
    pub fn spawn(&mut self) {
        self.spawn_logging("debug");
    }

    /// [`Gateway::spawn`] with the log filter `RUST_LOG=<filter>` (`trace` for a search of the
    /// log for what must never be in it).
    pub fn spawn_logging(&mut self, filter: &str) {
        self.spawn_with_env(filter, &[]);
    }

    /// [`Gateway::spawn_logging`] with more environment variables for `rxgate run` (libfaketime's,
    /// for one).
    pub fn spawn_with_env(&mut self, filter: &str, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.log_path()).expect("log file");
        let child = Command::new(bin("rxgate"))
            .arg("--config")
            .arg(&self.config)
            .arg("run")
            .envs(env.iter().copied())
            .env("RUST_LOG", filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("spawn rxgate run");
        self.child = Some(child);
        let status = wait_until(
            Duration::from_secs(20),
            "the gateway to report its listeners",
            || {
                if let Some(child) = self.child.as_mut()
                    && let Ok(Some(exit)) = child.try_wait()
                {
                    panic!("rxgate run exited with {exit}:\n{}", self.logs());
                }
                let output = self.cli(&["status", "--json"]);
                if !output.status.success() {
                    return None;
                }
                let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
                status["running"].as_bool().filter(|r| *r).map(|_| status)
            },
        );
        for pair in status["listeners"].as_array().into_iter().flatten() {
            let name = pair[0].as_str().unwrap_or_default();
            let addr: SocketAddr = pair[1]
                .as_str()
                .unwrap_or_default()
                .parse()
                .expect("listener address");
            match name {
                "enroll" => self.enroll = addr,
                "mqtt" => self.mqtt = addr,
                "metrics" => self.metrics = addr,
                "console" => self.console = addr,
                _ => {}
            }
        }
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("rxgate.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `rxgate --config <config> args...`.
    pub fn cli(&self, args: &[&str]) -> Output {
        run(Command::new(bin("rxgate"))
            .arg("--config")
            .arg(&self.config)
            .args(args))
    }

    /// Runs a CLI command that must succeed; returns its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "rxgate {args:?} failed: {}",
            text(&output)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A fresh one-time token for `device`.
    pub fn token(&self, device: &str, kind: &str) -> String {
        self.cli_ok(&["token", "create", "--device", device, "--kind", kind])
            .trim()
            .to_owned()
    }

    /// `https://127.0.0.1:<port>` of the EST listener.
    pub fn est_url(&self) -> String {
        format!("https://{}", self.enroll)
    }

    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir().join("ca/ca.crt")
    }

    /// Enrolls `device` with `rxgate-sim enroll` (the gateway must be running); returns the folder
    /// holding `device.key`, `device.crt` and `ca.crt`.
    pub fn enroll_with_sim(&self, device: &str, kind: &str) -> PathBuf {
        let token = self.token(device, kind);
        let out = self.path(&format!("sim-{device}"));
        let output = run(Command::new(bin("rxgate-sim"))
            .args([
                "enroll",
                "--est",
                &self.est_url(),
                "--device",
                device,
                "--token",
                &token,
                "--out",
            ])
            .arg(&out)
            .arg("--ca")
            .arg(self.ca_cert()));
        assert!(
            output.status.success(),
            "rxgate-sim enroll failed: {}",
            text(&output)
        );
        out
    }

    /// `mosquitto_pub` or `mosquitto_sub` (`program`) set to reach the device listener as
    /// `client_id`, with the credentials in `creds` (from [`Gateway::enroll_with_sim`]).
    pub fn device_client(&self, program: &str, creds: &Path, client_id: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(["-h", "127.0.0.1", "-p", &self.mqtt.port().to_string()])
            .arg("--cafile")
            .arg(creds.join("ca.crt"))
            .arg("--cert")
            .arg(creds.join("device.crt"))
            .arg("--key")
            .arg(creds.join("device.key"))
            .args(["-i", client_id]);
        cmd
    }

    /// Runs `mosquitto_pub` as `device` with the credentials in `creds` (from
    /// [`Gateway::enroll_with_sim`]), QoS 1; returns its output.
    pub fn mosquitto_pub(
        &self,
        creds: &Path,
        client_id: &str,
        topic: &str,
        message: &str,
    ) -> Output {
        run(self
            .device_client("mosquitto_pub", creds, client_id)
            .args(["-t", topic, "-m", message, "-q", "1"]))
    }

    /// Sends SIGTERM and waits for the daemon to exit; returns whether it exited cleanly.
    pub fn stop(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = wait_until(Duration::from_secs(15), "the gateway to stop", || {
            child.try_wait().ok().flatten()
        });
        status.success()
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP answer as curl saw it.
#[derive(Debug)]
pub struct Http {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: String,
}

impl Http {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Runs curl with `args` (URL included) and returns status, headers and body. curl failures
/// (connection refused, TLS errors) panic with curl's message.
pub fn curl(dir: &Path, args: &[&str]) -> Http {
    let headers = tempfile::NamedTempFile::new_in(dir).expect("temp file");
    let body = tempfile::NamedTempFile::new_in(dir).expect("temp file");
    let output = run(Command::new("curl")
        .args(["-sS", "--max-time", "30", "-D"])
        .arg(headers.path())
        .arg("-o")
        .arg(body.path())
        .args(["-w", "%{http_code}"])
        .args(args)
        .current_dir(dir));
    assert!(
        output.status.success(),
        "curl {args:?} failed: {}",
        text(&output)
    );
    Http {
        status: String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("http status"),
        body: std::fs::read(body.path()).expect("body"),
        headers: std::fs::read_to_string(headers.path()).unwrap_or_default(),
    }
}

/// Like [`curl`] but returns curl's own failure instead of panicking.
pub fn curl_raw(dir: &Path, args: &[&str]) -> Output {
    run(Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .current_dir(dir))
}

/// A Python with aiosmtpd (Debian package python3-aiosmtpd): `RXGATE_SMTP_PYTHON`, else
/// Debian's, else `python3`.
pub fn smtp_python() -> PathBuf {
    std::env::var_os("RXGATE_SMTP_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/python3", "python3"].map(PathBuf::from))
        .find(|p| {
            Command::new(p)
                .args(["-c", "import aiosmtpd"])
                .status()
                .is_ok_and(|s| s.success())
        })
        .expect("a Python with aiosmtpd: apt-get install python3-aiosmtpd")
}

/// A real SMTP server writing each mail as JSON into `dir`.
pub fn smtp_sink(port: u16, dir: &Path) -> (Proc, u16) {
    std::fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(smtp_python());
    cmd.arg(workspace().join("gateway/tests/smtp_sink.py"))
        .args(["--port", &port.to_string(), "--dir"])
        .arg(dir);
    start_ready(cmd, "the SMTP sink")
}

pub fn mails(dir: &Path) -> Vec<serde_json::Value> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| serde_json::from_str(&std::fs::read_to_string(p).ok()?).ok())
        .collect()
}

pub fn wait_for_mails(dir: &Path, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
    wait_until(timeout, &format!("{n} mail(s)"), || {
        let got = mails(dir);
        (got.len() >= n).then_some(got)
    })
}

/// `RXGATE_PYTHON`, else the workspace's `.venv` (scripts/test installs Selenium, pyotp and
/// axe-core there), else `python3`.
pub fn python() -> PathBuf {
    let venv = workspace().join(".venv/bin/python");
    std::env::var_os("RXGATE_PYTHON")
        .map(PathBuf::from)
        .or_else(|| venv.exists().then_some(venv))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Where the browser tests keep a screenshot of every page: `<target>/console-screenshots/`.
pub fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target"));
    target.join("console-screenshots")
}

/// Runs the browser test `tests/browser/<script>` with `args` (and `--shots`) against `gw`;
/// returns the JSON line it printed last, after checking that axe-core ran and found no serious
/// or critical violation.
pub fn browser_test(gw: &Gateway, script: &str, args: &[&str]) -> serde_json::Value {
    let output = Command::new(python())
        .arg(workspace().join("tests/browser").join(script))
        .args(args)
        .arg("--shots")
        .arg(screenshots())
        .output()
        .unwrap_or_else(|e| panic!("run tests/browser/{script}: {e}"));
    assert!(
        output.status.success(),
        "the browser test failed (needs chromium, chromium-driver, and selenium, pyotp and axe-core-python in .venv: scripts/test installs them): {}\n{}",
        text(&output),
        gw.logs()
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let seen: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .expect("the browser test's JSON line");
    assert!(
        !seen["axe_pages"].as_array().unwrap().is_empty(),
        "axe-core ran: {seen}"
    );
    assert_eq!(
        seen["axe_violations"],
        serde_json::json!({}),
        "serious or critical accessibility violations"
    );
    seen
}
