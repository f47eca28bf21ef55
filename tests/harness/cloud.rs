//! A real mosquitto as the cloud broker, with mutual TLS, and `mosquitto_sub` as a backend.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{openssl, wait_until};

/// A cloud PKI (CA, broker certificate, gateway and backend client certificates) made with
/// openssl in a temporary folder.
pub struct CloudPki {
    pub dir: PathBuf,
}

impl CloudPki {
    pub fn create(dir: &Path) -> CloudPki {
        std::fs::create_dir_all(dir).expect("cloud pki dir");
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend_from_slice(&ec);
        ca.extend_from_slice(&[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Test Cloud CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ]);
        openssl(dir, &ca);
        for (name, cn, ext) in [
            (
                "broker",
                "localhost",
                "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            (
                "gateway",
                "rxgate-store-0042",
                "extendedKeyUsage=clientAuth\n",
            ),
            ("backend", "backend", "extendedKeyUsage=clientAuth\n"),
        ] {
            let mut req = vec!["req", "-new"];
            req.extend_from_slice(&ec);
            let key = format!("{name}.key");
            let csr = format!("{name}.csr");
            let subj = format!("/CN={cn}");
            req.extend_from_slice(&["-keyout", &key, "-out", &csr, "-subj", &subj]);
            openssl(dir, &req);
            let ext_file = format!("{name}.ext");
            std::fs::write(dir.join(&ext_file), ext).expect("ext file");
            let pem = format!("{name}.pem");
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "30",
                    "-extfile",
                    &ext_file,
                ],
            );
        }
        CloudPki {
            dir: dir.to_owned(),
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// The `[cloud]` section a gateway needs for this broker.
    pub fn gateway_config(&self, port: u16) -> String {
        format!(
            "[cloud]\nurl = \"mqtts://127.0.0.1:{port}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nreconnect_min = \"200ms\"\nreconnect_max = \"1s\"\n",
            self.path("ca.pem"),
            self.path("gateway.pem"),
            self.path("gateway.key"),
        )
    }
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind probe");
    listener.local_addr().expect("probe address").port()
}

/// mosquitto on a loopback port, requiring client certificates from the cloud CA.
pub struct Cloud {
    pub pki: CloudPki,
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
}

impl Cloud {
    /// Makes the PKI under `dir` and starts mosquitto.
    pub fn start(dir: &Path) -> Cloud {
        let pki = CloudPki::create(&dir.join("cloud-pki"));
        let mut cloud = Cloud {
            port: free_port(),
            log: dir.join("mosquitto.log"),
            pki,
            child: None,
        };
        cloud.restart();
        cloud
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        let conf = self.pki.dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nuser root\nallow_anonymous false\nrequire_certificate true\nuse_identity_as_username true\n\
                 cafile {}\ncertfile {}\nkeyfile {}\npersistence true\npersistence_location {}/\n\
                 max_inflight_messages 100\nmax_queued_messages 100000\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n",
                self.port,
                self.pki.path("ca.pem"),
                self.pki.path("broker.pem"),
                self.pki.path("broker.key"),
                self.pki.dir.display(),
            ),
        )
        .expect("mosquitto.conf");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("mosquitto log");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start mosquitto (Debian package mosquitto)");
        self.child = Some(child);
        let addr = self.addr();
        let log = self.log.clone();
        wait_until(Duration::from_secs(10), "mosquitto to listen", || {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "mosquitto exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::net::TcpStream::connect(addr).ok().map(drop)
        });
    }

    /// Freezes the broker (SIGSTOP): connections stay open, and nothing is read, delivered or
    /// acknowledged until [`Cloud::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// The broker's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, signal);
            }
        }
    }

    /// Stops the broker (a cloud outage). It saves its sessions, so a backend's persistent
    /// subscription gets what was published for it once the broker is back.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let stopped = wait_until(Duration::from_secs(10), "mosquitto to stop", || {
                child.try_wait().ok().flatten()
            });
            let _ = stopped;
        }
    }

    /// Subscribes as a backend to `filter` (QoS 1, persistent session, reconnecting by itself)
    /// and returns once the subscription is live.
    pub fn subscribe(&self, filter: &str) -> Subscription {
        static BACKENDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let client_id = format!(
            "backend-{}",
            BACKENDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--cafile", &self.pki.path("ca.pem")])
            .args([
                "--cert",
                &self.pki.path("backend.pem"),
                "--key",
                &self.pki.path("backend.key"),
            ])
            .args(["-q", "1", "-c", "-i", &client_id, "-F", "%t\t%p"])
            .args(["-t", filter, "-t", "probe/#"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub (Debian package mosquitto-clients)");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let at = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_micros() as u64)
                    .unwrap_or(0);
                sink.lock().unwrap().push((line, at));
            }
        });
        let subscription = Subscription { child, lines };
        // Live once a probe published after subscribing comes back.
        wait_until(Duration::from_secs(10), "the backend subscription", || {
            self.publish("probe/ready", "1");
            std::thread::sleep(Duration::from_millis(50));
            let lines = subscription.lines.lock().unwrap();
            lines
                .iter()
                .any(|(l, _)| l.starts_with("probe/ready\t"))
                .then_some(())
        });
        subscription
    }

    /// Publishes on the cloud broker as the backend.
    pub fn publish(&self, topic: &str, message: &str) {
        let _ = Command::new("mosquitto_pub")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["--cafile", &self.pki.path("ca.pem")])
            .args([
                "--cert",
                &self.pki.path("backend.pem"),
                "--key",
                &self.pki.path("backend.key"),
            ])
            .args(["-t", topic, "-m", message, "-q", "1"])
            .stdin(Stdio::null())
            .output();
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `mosquitto_sub`, collecting `(topic, payload)` lines.
pub struct Subscription {
    child: Child,
    /// Each line with when it arrived (µs since the epoch).
    lines: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Subscription {
    /// Everything received so far, probes excluded.
    pub fn messages(&self) -> Vec<(String, String)> {
        self.timed_messages()
            .into_iter()
            .map(|(t, p, _)| (t, p))
            .collect()
    }

    /// Like [`Subscription::messages`], with each message's arrival time (µs since the epoch).
    pub fn timed_messages(&self) -> Vec<(String, String, u64)> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(l, at)| l.split_once('\t').map(|(t, p)| (t, p, *at)))
            .filter(|(t, _, _)| !t.starts_with("probe/"))
            .map(|(t, p, at)| (t.to_owned(), p.to_owned(), at))
            .collect()
    }

    /// JSON payloads received on `topic`.
    pub fn json_on(&self, topic: &str) -> Vec<serde_json::Value> {
        self.messages()
            .into_iter()
            .filter(|(t, _)| t == topic)
            .filter_map(|(_, p)| serde_json::from_str(&p).ok())
            .collect()
    }

    /// Waits until `n` JSON messages arrived on `topic`; returns them all.
    pub fn wait_for(&self, topic: &str, n: usize, timeout: Duration) -> Vec<serde_json::Value> {
        wait_until(timeout, &format!("{n} message(s) on {topic}"), || {
            let got = self.json_on(topic);
            (got.len() >= n).then_some(got)
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
