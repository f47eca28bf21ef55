//! Enrollment end to end: the real daemon, with `openssl` and `curl` as the device.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rxgate_e2e::{Gateway, Http, curl, openssl, text, wait_until};

/// A device made of openssl and curl, working in its own folder.
struct Device {
    id: String,
    dir: PathBuf,
}

impl Device {
    fn new(gw: &Gateway, id: &str) -> Device {
        let dir = gw.path(id);
        std::fs::create_dir_all(&dir).unwrap();
        Device {
            id: id.to_owned(),
            dir,
        }
    }

    /// Makes `<name>.key` and `<name>.csr.b64` (base64 DER PKCS#10) with extra `openssl req` args.
    fn csr(&self, name: &str, cn: &str, key_args: &[&str], extra: &[&str]) -> PathBuf {
        let key = format!("{name}.key");
        let der = format!("{name}.csr.der");
        let subj = format!("/CN={cn}");
        let mut args = vec![
            "req", "-new", "-nodes", "-keyout", &key, "-subj", &subj, "-outform", "DER", "-out",
            &der,
        ];
        args.extend_from_slice(key_args);
        args.extend_from_slice(extra);
        openssl(&self.dir, &args);
        let b64 = self.dir.join(format!("{name}.csr.b64"));
        openssl(
            &self.dir,
            &["base64", "-in", &der, "-out", b64.to_str().unwrap()],
        );
        b64
    }

    fn p256_csr(&self, name: &str) -> PathBuf {
        self.csr(
            name,
            &self.id,
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
            &[],
        )
    }

    /// GET cacerts and turn it into `ca.pem`.
    fn fetch_ca(&self, gw: &Gateway) -> PathBuf {
        let answer = curl(
            &self.dir,
            &[
                "--cacert",
                gw.ca_cert().to_str().unwrap(),
                &format!("{}/.well-known/est/cacerts", gw.est_url()),
            ],
        );
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        assert!(
            answer
                .headers
                .to_ascii_lowercase()
                .contains("content-type: application/pkcs7-mime")
        );
        std::fs::write(self.dir.join("cacerts.b64"), &answer.body).unwrap();
        openssl(
            &self.dir,
            &["base64", "-d", "-in", "cacerts.b64", "-out", "cacerts.p7"],
        );
        openssl(
            &self.dir,
            &[
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                "cacerts.p7",
                "-print_certs",
                "-out",
                "ca.pem",
            ],
        );
        self.dir.join("ca.pem")
    }

    fn post(&self, gw: &Gateway, endpoint: &str, auth: &[&str], body: &Path) -> Http {
        let ca = gw.ca_cert().display().to_string();
        let data = format!("@{}", body.display());
        let url = format!("{}/.well-known/est/{endpoint}", gw.est_url());
        let mut args = vec![
            "--cacert",
            &ca,
            "-H",
            "Content-Type: application/pkcs10",
            "--data-binary",
            &data,
        ];
        args.extend_from_slice(auth);
        args.push(&url);
        curl(&self.dir, &args)
    }

    fn enroll(&self, gw: &Gateway, token: &str, csr: &Path) -> Http {
        let credentials = format!("{}:{token}", self.id);
        self.post(gw, "simpleenroll", &["-u", &credentials], csr)
    }

    /// Writes a certs-only answer as `<name>.pem`.
    fn save_cert(&self, answer: &Http, name: &str) -> PathBuf {
        assert_eq!(answer.status, 200, "{}", answer.body_text());
        let b64 = format!("{name}.p7.b64");
        std::fs::write(self.dir.join(&b64), &answer.body).unwrap();
        openssl(
            &self.dir,
            &["base64", "-d", "-in", &b64, "-out", &format!("{name}.p7")],
        );
        let pem = format!("{name}.pem");
        openssl(
            &self.dir,
            &[
                "pkcs7",
                "-inform",
                "DER",
                "-in",
                &format!("{name}.p7"),
                "-print_certs",
                "-out",
                &pem,
            ],
        );
        self.dir.join(pem)
    }

    fn cert_text(&self, pem: &Path) -> String {
        let out = openssl(
            &self.dir,
            &["x509", "-in", pem.to_str().unwrap(), "-noout", "-text"],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn serial(&self, pem: &Path) -> String {
        let out = openssl(
            &self.dir,
            &["x509", "-in", pem.to_str().unwrap(), "-noout", "-serial"],
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .trim_start_matches("serial=")
            .to_lowercase()
    }
}

fn assert_serving(gw: &mut Gateway) {
    assert!(gw.is_running(), "the daemon died:\n{}", gw.logs());
    let probe = Device::new(gw, "probe");
    probe.fetch_ca(gw);
}

#[test]
fn device_enrolls_with_only_openssl_and_curl_and_gets_a_client_cert_that_verifies() {
    let mut gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-01");
    let ca = device.fetch_ca(&gw);
    let token = gw.token("fridge-01", "fridge");
    let csr = device.p256_csr("dev");
    let cert = device.save_cert(&device.enroll(&gw, &token, &csr), "dev");

    let verify = openssl(
        &device.dir,
        &[
            "verify",
            "-CAfile",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains(": OK"));
    let details = device.cert_text(&cert);
    assert!(
        details.contains("TLS Web Client Authentication"),
        "{details}"
    );
    assert!(details.contains("CA:FALSE"), "{details}");
    assert!(
        details.contains("URI:urn:rxgate:device:store-0042:fridge:fridge-01"),
        "{details}"
    );
    assert!(
        details.contains("Subject: CN=fridge-01") || details.contains("Subject: CN = fridge-01"),
        "{details}"
    );

    let list: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["device", "list", "--json"])).unwrap();
    assert_eq!(list[0]["id"], "fridge-01");
    assert_eq!(list[0]["status"], "active");
    assert_eq!(list[0]["serial"], device.serial(&cert));
    assert!(gw.stop(), "daemon did not exit cleanly:\n{}", gw.logs());
    assert!(
        !gw.data_dir().join("rxgate.sock").exists(),
        "admin socket left behind"
    );
}

#[test]
fn reused_wrong_missing_and_expired_tokens_get_401_and_the_daemon_keeps_serving() {
    let mut gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-02");
    let csr = device.p256_csr("dev");
    let token = gw.token("fridge-02", "fridge");

    let missing = device.post(&gw, "simpleenroll", &[], &csr);
    assert_eq!(missing.status, 401, "{}", missing.body_text());
    assert!(
        missing.headers.contains("www-authenticate: Basic"),
        "{}",
        missing.headers
    );

    let wrong = device.enroll(&gw, "rxg_not-the-token", &csr);
    assert_eq!(wrong.status, 401, "{}", wrong.body_text());
    // Every 401 to simpleenroll has the same body; the reason is in the audit trail only.
    assert_eq!(wrong.body, missing.body, "{}", wrong.body_text());

    assert_eq!(device.enroll(&gw, &token, &csr).status, 200);
    let reused = device.enroll(&gw, &token, &csr);
    assert_eq!(reused.status, 401, "{}", reused.body_text());
    assert_eq!(reused.body, missing.body, "{}", reused.body_text());

    let short = gw.cli_ok(&[
        "token",
        "create",
        "--device",
        "fridge-03",
        "--kind",
        "fridge",
        "--ttl",
        "1s",
    ]);
    let other = Device::new(&gw, "fridge-03");
    let other_csr = other.p256_csr("dev");
    std::thread::sleep(Duration::from_millis(1100));
    let expired = other.enroll(&gw, short.trim(), &other_csr);
    assert_eq!(expired.status, 401, "{}", expired.body_text());
    assert_eq!(expired.body, missing.body, "{}", expired.body_text());

    assert_serving(&mut gw);
}

#[test]
fn five_wrong_tokens_from_one_source_lock_it_out_and_burn_after_failed_burns_the_real_one() {
    let gw = Gateway::start("[enroll]\nburn_after_failed = 5\n");
    let device = Device::new(&gw, "cab-1");
    let csr = device.p256_csr("dev");
    let token = gw.token("cab-1", "cabinet");
    for _ in 0..5 {
        assert_eq!(device.enroll(&gw, "rxg_guess", &csr).status, 401);
    }
    let late = device.enroll(&gw, &token, &csr);
    assert_eq!(late.status, 401);
    assert!(
        late.body_text()
            .contains("do not match a pending enrollment"),
        "{}",
        late.body_text()
    );
    let tokens: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["token", "list", "--json"])).unwrap();
    assert_eq!(tokens[0]["state"], "burnt");
    assert_eq!(tokens[0]["failed_attempts"], 5);
}

#[test]
fn csr_for_another_device_is_refused_and_the_token_stays_usable() {
    let gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-04");
    let token = gw.token("fridge-04", "fridge");
    let foreign = device.csr(
        "foreign",
        "fridge-99",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[],
    );
    let refused = device.enroll(&gw, &token, &foreign);
    assert_eq!(refused.status, 400, "{}", refused.body_text());
    assert!(
        refused.body_text().contains("fridge-99"),
        "{}",
        refused.body_text()
    );
    let csr = device.p256_csr("dev");
    assert_eq!(device.enroll(&gw, &token, &csr).status, 200);
}

#[test]
fn rsa_1024_is_refused_with_the_reason_and_rsa_2048_p384_and_ed25519_are_accepted() {
    let gw = Gateway::start("");
    let cases: [(&str, &[&str], u16); 4] = [
        ("rsa1024", &["-newkey", "rsa:1024"], 400),
        ("rsa2048", &["-newkey", "rsa:2048"], 200),
        (
            "p384",
            &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
            200,
        ),
        ("ed25519", &["-newkey", "ed25519"], 200),
    ];
    for (name, key_args, expected) in cases {
        let device = Device::new(&gw, name);
        let token = gw.token(name, "sensor");
        let csr = device.csr("dev", name, key_args, &[]);
        let answer = device.enroll(&gw, &token, &csr);
        assert_eq!(answer.status, expected, "{name}: {}", answer.body_text());
        if expected == 400 {
            assert!(
                answer.body_text().contains("1024"),
                "{}",
                answer.body_text()
            );
            assert!(
                answer.body_text().contains("2048"),
                "{}",
                answer.body_text()
            );
        }
    }
}

#[test]
fn csr_asking_for_ca_true_and_extra_sans_gets_neither() {
    let gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-05");
    let token = gw.token("fridge-05", "fridge");
    let csr = device.csr(
        "evil",
        "fridge-05",
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
        &[
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "subjectAltName=DNS:evil.example,IP:10.0.0.1",
            "-addext",
            "keyUsage=critical,keyCertSign",
        ],
    );
    let cert = device.save_cert(&device.enroll(&gw, &token, &csr), "evil");
    let details = device.cert_text(&cert);
    assert!(details.contains("CA:FALSE"), "{details}");
    assert!(!details.contains("CA:TRUE"), "{details}");
    assert!(
        !details.contains("evil.example") && !details.contains("10.0.0.1"),
        "{details}"
    );
    assert!(!details.contains("Certificate Sign"), "{details}");
}

#[test]
fn garbage_empty_and_oversized_bodies_get_400_and_413_and_the_daemon_keeps_serving() {
    let mut gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-06");
    let token = gw.token("fridge-06", "fridge");
    let garbage = device.dir.join("garbage");
    std::fs::write(&garbage, "this is !!! not base64 at all").unwrap();
    let not_a_csr = device.dir.join("not-a-csr");
    std::fs::write(&not_a_csr, "aGVsbG8gd29ybGQ=").unwrap();
    let empty = device.dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    let huge = device.dir.join("huge");
    std::fs::write(&huge, vec![b'A'; 4 * 1024 * 1024]).unwrap();

    for (body, status) in [
        (&garbage, 400),
        (&not_a_csr, 400),
        (&empty, 400),
        (&huge, 413),
    ] {
        let answer = device.enroll(&gw, &token, body);
        assert_eq!(
            answer.status,
            status,
            "{}: {}",
            body.display(),
            answer.body_text()
        );
        assert!(!answer.body_text().trim().is_empty(), "a refusal says why");
        assert_serving(&mut gw);
    }
    // None of it cost the token.
    let csr = device.p256_csr("dev");
    assert_eq!(device.enroll(&gw, &token, &csr).status, 200);
}

#[test]
fn simplereenroll_with_the_current_cert_gives_a_new_serial_and_a_revoked_device_is_refused() {
    let gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-07");
    let token = gw.token("fridge-07", "fridge");
    let csr = device.p256_csr("dev");
    let first = device.save_cert(&device.enroll(&gw, &token, &csr), "dev");
    let first_serial = device.serial(&first);

    let renew_csr = device.p256_csr("renew");
    let renewed = device.post(
        &gw,
        "simplereenroll",
        &[
            "--cert",
            first.to_str().unwrap(),
            "--key",
            device.dir.join("dev.key").to_str().unwrap(),
        ],
        &renew_csr,
    );
    let second = device.save_cert(&renewed, "renewed");
    let second_serial = device.serial(&second);
    assert_ne!(first_serial, second_serial);

    let without_cert = device.post(&gw, "simplereenroll", &[], &renew_csr);
    assert_eq!(without_cert.status, 401, "{}", without_cert.body_text());

    gw.cli_ok(&["device", "revoke", "fridge-07", "--reason", "stolen"]);
    let again = device.p256_csr("again");
    let refused = device.post(
        &gw,
        "simplereenroll",
        &[
            "--cert",
            second.to_str().unwrap(),
            "--key",
            device.dir.join("renew.key").to_str().unwrap(),
        ],
        &again,
    );
    assert_eq!(refused.status, 403, "{}", refused.body_text());

    // Re-commissioning needs a new token created explicitly; the old one is long used, and the
    // answer is the same 401 any unknown device gets (the audit trail says `device_revoked`).
    assert_eq!(device.enroll(&gw, &token, &again).status, 401);
    let fresh = gw.token("fridge-07", "fridge");
    assert_eq!(device.enroll(&gw, &fresh, &again).status, 200);
}

#[test]
fn init_refuses_to_clobber_and_private_keys_are_0600_in_a_0700_dir() {
    let gw = Gateway::init("");
    let secrets = ["ca/ca.key", "ca/ca.crt", "tls/server.key", "pseudonym.key"];
    let read_all = || -> Vec<Vec<u8>> {
        secrets
            .iter()
            .map(|f| std::fs::read(gw.data_dir().join(f)).unwrap())
            .collect()
    };
    let before = read_all();
    let again = gw.cli(&["init"]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("--force"),
        "{}",
        text(&again)
    );
    assert!(
        before == read_all(),
        "a refused init changed one of {secrets:?}"
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&gw.data_dir()), 0o700);
    for key in ["ca/ca.key", "tls/server.key", "pseudonym.key"] {
        assert_eq!(mode(&gw.data_dir().join(key)), 0o600, "{key}");
    }
    gw.cli_ok(&["init", "--force"]);
    let after = read_all();
    assert_ne!(before[1], after[1], "init --force makes a new CA");
}

#[test]
fn token_secrets_never_appear_in_logs_or_on_disk() {
    let gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-08");
    let token = gw.token("fridge-08", "fridge");
    let other = gw.token("fridge-09", "fridge");
    let csr = device.p256_csr("dev");
    assert_eq!(device.enroll(&gw, "rxg_wrong", &csr).status, 401);
    assert_eq!(device.enroll(&gw, &token, &csr).status, 200);
    let logs = gw.logs();
    assert!(
        logs.contains("Device enrolled"),
        "debug logs are on: {logs}"
    );
    for secret in [&token, &other] {
        assert!(!logs.contains(secret.as_str()), "token in the log");
        let secret_part = secret.trim_start_matches("rxg_");
        for entry in walk(&gw.data_dir()) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(
                !bytes
                    .windows(secret_part.len())
                    .any(|w| w == secret_part.as_bytes()),
                "token secret found in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else if path.is_file() {
            out.push(path);
        }
    }
    out
}

#[test]
fn twenty_parallel_enrollments_all_succeed_with_distinct_serials() {
    let gw = Gateway::start("[enroll]\nrate_burst = 100\n");
    let devices: Vec<(Device, String, PathBuf)> = (0..20)
        .map(|i| {
            let id = format!("fridge-p{i:02}");
            let device = Device::new(&gw, &id);
            let token = gw.token(&id, "fridge");
            let csr = device.p256_csr("dev");
            (device, token, csr)
        })
        .collect();
    let serials: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .map(|(device, token, csr)| {
                let gw = &gw;
                s.spawn(move || {
                    let cert = device.save_cert(&device.enroll(gw, token, csr), "dev");
                    device.serial(&cert)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut unique = serials.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20, "{serials:?}");
}

#[test]
fn one_source_over_its_rate_gets_429_with_retry_after() {
    let gw = Gateway::start("[enroll]\nrate_per_minute = 1\nrate_burst = 2\n");
    let device = Device::new(&gw, "probe");
    let url = format!("{}/.well-known/est/cacerts", gw.est_url());
    let ca = gw.ca_cert();
    let statuses: Vec<u16> = (0..3)
        .map(|_| curl(&device.dir, &["--cacert", ca.to_str().unwrap(), &url]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    let limited = curl(&device.dir, &["--cacert", ca.to_str().unwrap(), &url]);
    assert!(
        limited
            .headers
            .to_ascii_lowercase()
            .contains("retry-after:"),
        "{}",
        limited.headers
    );
}

#[test]
fn commands_work_the_same_with_and_without_the_daemon() {
    let mut gw = Gateway::init("");
    let offline_token = gw.token("fridge-10", "fridge");
    let status: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["status", "--json"])).unwrap();
    assert_eq!(status["running"], false);
    assert_eq!(status["devices_pending"], 1);
    gw.spawn();
    // Only the gateway's own user may talk to the daemon.
    let socket = std::fs::metadata(gw.data_dir().join("rxgate.sock")).unwrap();
    assert!(socket.file_type().is_socket());
    assert_eq!(socket.permissions().mode() & 0o777, 0o600);
    let device = Device::new(&gw, "fridge-10");
    let csr = device.p256_csr("dev");
    assert_eq!(device.enroll(&gw, &offline_token, &csr).status, 200);
    let listed = gw.cli_ok(&["device", "list"]);
    assert!(
        listed.contains("fridge-10") && listed.contains("active"),
        "{listed}"
    );
    assert!(gw.stop());
    let listed = gw.cli_ok(&["device", "list"]);
    assert!(
        listed.contains("fridge-10") && listed.contains("active"),
        "{listed}"
    );
}

#[test]
fn an_imported_intermediate_ca_issues_devices_and_cacerts_returns_the_chain() {
    let pki = tempfile::tempdir().unwrap();
    let dir = pki.path();
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "root.key",
            "-out",
            "root.pem",
            "-subj",
            "/CN=Pharmacy Chain Root",
            "-days",
            "3650",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "int.key",
            "-out",
            "int.csr",
            "-subj",
            "/CN=Store 42 Issuing CA",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "int.csr",
            "-CA",
            "root.pem",
            "-CAkey",
            "root.key",
            "-CAcreateserial",
            "-out",
            "int.pem",
            "-days",
            "1825",
            "-extfile",
            "ext.cnf",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "int.key", "-out", "int.pk8",
        ],
    );

    let arg = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let mut gw = Gateway::init_with(
        &rxgate_e2e::config_text("store-0042", ""),
        &[
            "--ca-cert",
            &arg("int.pem"),
            "--ca-key",
            &arg("int.pk8"),
            "--ca-chain",
            &arg("root.pem"),
        ],
    );
    gw.spawn();
    let device = Device::new(&gw, "fridge-11");
    let chain = device.fetch_ca(&gw);
    let chain_text = std::fs::read_to_string(&chain).unwrap();
    assert_eq!(
        chain_text.matches("BEGIN CERTIFICATE").count(),
        2,
        "{chain_text}"
    );
    assert!(
        chain_text.contains("Pharmacy Chain Root") && chain_text.contains("Store 42 Issuing CA")
    );
    let token = gw.token("fridge-11", "fridge");
    let csr = device.p256_csr("dev");
    let cert = device.save_cert(&device.enroll(&gw, &token, &csr), "dev");
    let verify = openssl(
        &device.dir,
        &[
            "verify",
            "-CAfile",
            &arg("root.pem"),
            "-untrusted",
            &arg("int.pem"),
            cert.to_str().unwrap(),
        ],
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains(": OK"));
}

#[test]
fn config_check_lists_every_error_with_key_and_value_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[gateway]\nsite = \"store 42\"\n[enroll]\ncert_validity = \"1s\"\nmax_body_bytes = 10\n",
    )
    .unwrap();
    let output = rxgate_e2e::run(
        std::process::Command::new(rxgate_e2e::bin("rxgate"))
            .arg("--config")
            .arg(&config)
            .args(["config", "check"]),
    );
    assert!(!output.status.success());
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(out.contains("gateway.site = \"store 42\""), "{out}");
    assert!(out.contains("enroll.cert_validity = \"1s\""), "{out}");
    assert!(out.contains("enroll.max_body_bytes = 10"), "{out}");

    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[gateway]\nsite = \"s\"\n").unwrap();
    let output = rxgate_e2e::run(
        std::process::Command::new(rxgate_e2e::bin("rxgate"))
            .arg("--config")
            .arg(&good)
            .args(["config", "check"]),
    );
    assert!(output.status.success(), "{}", text(&output));
}

#[test]
fn the_daemon_stops_cleanly_on_sigterm_with_requests_in_flight() {
    let mut gw = Gateway::start("");
    let device = Device::new(&gw, "fridge-12");
    device.fetch_ca(&gw);
    wait_until(Duration::from_secs(5), "socket", || {
        gw.data_dir().join("rxgate.sock").exists().then_some(())
    });
    assert!(gw.stop(), "{}", gw.logs());
    assert!(gw.logs().contains("rxgate stopped"), "{}", gw.logs());
}

#[test]
fn the_simulator_enrolls_and_renews_against_the_real_gateway() {
    let gw = Gateway::start("");
    let dir = gw.enroll_with_sim("fridge-13", "fridge");
    let before: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["device", "list", "--json"])).unwrap();
    let first = before[0]["serial"].as_str().unwrap().to_owned();
    let output = rxgate_e2e::run(
        std::process::Command::new(rxgate_e2e::bin("rxgate-sim"))
            .args(["renew", "--est", &gw.est_url(), "--dir"])
            .arg(&dir),
    );
    assert!(output.status.success(), "{}", text(&output));
    let after: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["device", "list", "--json"])).unwrap();
    let second = after[0]["serial"].as_str().unwrap();
    assert_ne!(first, second, "a new certificate");
    let pem = std::fs::read_to_string(dir.join("device.crt")).unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE"));
    // Only when due: with 30 days left, renewing "if expiring within 7 days" does nothing.
    let output = rxgate_e2e::run(
        std::process::Command::new(rxgate_e2e::bin("rxgate-sim"))
            .args([
                "renew",
                "--est",
                &gw.est_url(),
                "--if-expiring-within",
                "7d",
                "--dir",
            ])
            .arg(&dir),
    );
    assert!(output.status.success(), "{}", text(&output));
    let again: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["device", "list", "--json"])).unwrap();
    assert_eq!(again[0]["serial"].as_str().unwrap(), second);
}

/// libfaketime, which shifts the wall clock of the process it is preloaded into.
fn libfaketime() -> PathBuf {
    let arch = std::env::consts::ARCH;
    [
        format!("/usr/lib/{arch}-linux-gnu/faketime/libfaketime.so.1"),
        "/usr/lib/faketime/libfaketime.so.1".to_owned(),
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("libfaketime is missing: install Debian's faketime package")
}

/// Starts `rxgate run` with its wall clock shifted by `offset` (faketime's syntax: `+2h`, `-30d`);
/// the monotonic clock stays real, so timeouts and intervals behave. libfaketime is preloaded
/// directly rather than through the `faketime` wrapper, which forks: the harness's SIGTERM must
/// reach the gateway itself.
fn spawn_with_clock_offset(gw: &mut Gateway, offset: &str) {
    let log = std::fs::File::create(gw.log_path()).unwrap();
    let child = std::process::Command::new(rxgate_e2e::bin("rxgate"))
        .arg("--config")
        .arg(&gw.config)
        .arg("run")
        .env("RUST_LOG", "debug")
        .env("LD_PRELOAD", libfaketime())
        .env("FAKETIME", offset)
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    gw.child = Some(child);
    let listeners = wait_until(
        Duration::from_secs(20),
        "the gateway to report its listeners",
        || {
            if let Some(Ok(Some(exit))) = gw.child.as_mut().map(|c| c.try_wait()) {
                panic!("rxgate run exited with {exit}:\n{}", gw.logs());
            }
            let output = gw.cli(&["status", "--json"]);
            let status: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
            (status["running"] == true).then(|| status["listeners"].clone())
        },
    );
    for pair in listeners.as_array().into_iter().flatten() {
        let addr = pair[1].as_str().unwrap().parse().unwrap();
        match pair[0].as_str().unwrap() {
            "enroll" => gw.enroll = addr,
            "mqtt" => gw.mqtt = addr,
            _ => {}
        }
    }
}

/// The three files a device keeps (`ca.crt`, `device.crt`, `device.key`), for mosquitto_pub.
fn creds(gw: &Gateway, device: &Device, cert: &Path) -> PathBuf {
    let dir = device.dir.join("creds");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(gw.ca_cert(), dir.join("ca.crt")).unwrap();
    std::fs::copy(cert, dir.join("device.crt")).unwrap();
    std::fs::copy(device.dir.join("dev.key"), dir.join("device.key")).unwrap();
    dir
}

fn rfc3339(text: &str) -> time::OffsetDateTime {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("{text:?} is not RFC 3339: {e}"))
}

#[test]
fn with_ntp_blocked_after_a_power_cut_a_certificate_expired_before_the_time_floor_is_refused_for_simplereenroll_with_401()
 {
    // Installed two months ago (so the CA covers a clock a month behind); certificates live one
    // hour, the shortest the config allows.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let config_text = rxgate_e2e::config_text("store-0042", "[enroll]\ncert_validity = \"1h\"\n");
    std::fs::write(&config, config_text).unwrap();
    let init = rxgate_e2e::run(
        std::process::Command::new(rxgate_e2e::bin("rxgate"))
            .arg("--config")
            .arg(&config)
            .arg("init")
            .env("LD_PRELOAD", libfaketime())
            .env("FAKETIME", "-60d"),
    );
    assert!(init.status.success(), "{}", text(&init));
    let unbound = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let mut gw = Gateway {
        dir,
        config,
        child: None,
        enroll: unbound,
        mqtt: unbound,
        metrics: unbound,
        console: unbound,
    };

    // At real time, with a trusted clock: device "stolen" enrolls; its certificate ends in 1 h.
    gw.spawn();
    let stolen = Device::new(&gw, "stolen-01");
    let stolen_cert = stolen.save_cert(
        &stolen.enroll(
            &gw,
            &gw.token("stolen-01", "fridge"),
            &stolen.p256_csr("dev"),
        ),
        "dev",
    );
    assert!(gw.stop(), "daemon did not exit cleanly:\n{}", gw.logs());

    // Two hours later, still synchronised: the gateway sees (and stores) a time after that end.
    // Device "honest" enrolls now; its certificate is good for another hour.
    spawn_with_clock_offset(&mut gw, "+2h");
    let honest = Device::new(&gw, "honest-01");
    let honest_cert = honest.save_cert(
        &honest.enroll(
            &gw,
            &gw.token("honest-01", "fridge"),
            &honest.p256_csr("dev"),
        ),
        "dev",
    );
    assert!(gw.stop(), "daemon did not exit cleanly:\n{}", gw.logs());

    // Power cut: the Pi boots a month behind and NTP is blocked. The clock is not assumed synced.
    let config = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(
        &gw.config,
        config.replace("assume_clock_synced = true", "assume_clock_synced = false"),
    )
    .unwrap();
    spawn_with_clock_offset(&mut gw, "-30d");

    let devices: serde_json::Value =
        serde_json::from_str(&gw.cli_ok(&["device", "list", "--json"])).unwrap();
    let not_after = |id: &str| {
        let device = devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == id)
            .unwrap();
        device["not_after"].as_str().unwrap().to_owned()
    };
    let stolen_not_after = not_after("stolen-01");

    let renew = |device: &Device, cert: &Path| {
        let csr = device.p256_csr("renew");
        device.post(
            &gw,
            "simplereenroll",
            &[
                "--cert",
                cert.to_str().unwrap(),
                "--key",
                device.dir.join("dev.key").to_str().unwrap(),
            ],
            &csr,
        )
    };
    let refused = renew(&stolen, &stolen_cert);
    let body = refused.body_text();
    assert_eq!(refused.status, 401, "{body}\n{}", gw.logs());
    let prefix = format!("expired at {stolen_not_after}, before ");
    let floor = body
        .split_once(&prefix)
        .and_then(|(_, rest)| rest.split_once(','))
        .map(|(floor, _)| rfc3339(floor))
        .unwrap_or_else(|| panic!("the refusal names notAfter and the floor: {body}"));
    assert!(
        floor >= rfc3339(&stolen_not_after) + time::Duration::minutes(59),
        "the floor {floor} is the time seen two hours after enrollment: {body}"
    );
    assert!(body.contains("its clock is not synchronised"), "{body}");

    // The device listener refuses it too; a certificate valid at the floor still connects.
    let publish = |creds: &Path, id: &str| {
        gw.mosquitto_pub(
            creds,
            id,
            &format!("devices/{id}/telemetry"),
            r#"{"points":{"temperature_c":5.0}}"#,
        )
    };
    let stolen_pub = publish(&creds(&gw, &stolen, &stolen_cert), "stolen-01");
    assert!(!stolen_pub.status.success(), "{}", text(&stolen_pub));
    let honest_pub = publish(&creds(&gw, &honest, &honest_cert), "honest-01");
    assert!(honest_pub.status.success(), "{}", text(&honest_pub));

    // A certificate valid at the floor is renewed, despite its notBefore in the clock's future.
    let renewed = renew(&honest, &honest_cert);
    assert_eq!(renewed.status, 200, "{}", renewed.body_text());

    // The gateway's own timestamps did not go a month back: the refusal is stamped at the floor.
    // Refusals reach the audit trail through the refusal log, within a second.
    let refusal = wait_until(Duration::from_secs(10), "the refusal recorded", || {
        let entries: serde_json::Value =
            serde_json::from_str(&gw.cli_ok(&["audit", "export", "--from", "2020-01-01"])).ok()?;
        entries
            .as_array()?
            .iter()
            .rev()
            .find(|e| e["kind"] == "enroll.refused" && e["device"] == "stolen-01")
            .cloned()
    });
    assert_eq!(refusal["clock_synced"], false, "{refusal}");
    assert!(
        rfc3339(refusal["ts"].as_str().unwrap()) >= floor,
        "{refusal}"
    );
}

/// A loopback port free right now, for an EST listener whose port must be known before it
/// binds: it is written into certificates as the CRL distribution point (port 0 writes none).
fn free_loopback_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `openssl x509 -ext crlDistributionPoints` of a PEM certificate.
fn crl_distribution_point(dir: &Path, cert: &Path) -> String {
    let out = openssl(
        dir,
        &[
            "x509",
            "-in",
            cert.to_str().unwrap(),
            "-noout",
            "-ext",
            "crlDistributionPoints",
        ],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `openssl verify -crl_check` of `cert` against the CA and the CRL: its exit status and output.
fn verify_with_crl(dir: &Path, ca: &Path, crl_pem: &Path, cert: &Path) -> (bool, String) {
    let output = rxgate_e2e::run(
        std::process::Command::new("openssl")
            .args(["verify", "-crl_check", "-CAfile"])
            .arg(ca)
            .arg("-CRLfile")
            .arg(crl_pem)
            .arg(cert)
            .current_dir(dir),
    );
    (output.status.success(), text(&output))
}

#[test]
fn a_revoked_device_is_listed_in_the_crl_its_certificates_point_to_and_openssl_refuses_only_its_certificate()
 {
    let port = free_loopback_port();
    let gw = Gateway::start(&format!("[enroll]\nlisten = \"127.0.0.1:{port}\"\n"));
    let dir = gw.dir.path();
    let ca = gw.ca_cert();
    let crl_uri = format!("https://localhost:{port}/crl");
    let revoked = gw.enroll_with_sim("fridge-21", "fridge").join("device.crt");
    let good = gw.enroll_with_sim("fridge-22", "fridge").join("device.crt");

    for cert in [gw.data_dir().join("tls/server.crt"), revoked.clone()] {
        let ext = crl_distribution_point(dir, &cert);
        assert!(
            ext.contains(&format!("URI:{crl_uri}")),
            "{} lacks the CRL distribution point {crl_uri}:\n{ext}",
            cert.display()
        );
    }

    let serial = Device::new(&gw, "reader").serial(&revoked).to_uppercase();
    gw.cli_ok(&["device", "revoke", "fridge-21", "--reason", "stolen"]);
    let crl_der = gw.path("crl.der");
    let resolve = format!("localhost:{port}:127.0.0.1");
    let listing = wait_until(
        Duration::from_secs(10),
        "the CRL at the distribution point to list the revoked serial",
        || {
            let answer = curl(
                dir,
                &[
                    "--cacert",
                    ca.to_str().unwrap(),
                    "--resolve",
                    &resolve,
                    &crl_uri,
                ],
            );
            assert_eq!(answer.status, 200, "{}", answer.body_text());
            assert!(
                answer
                    .headers
                    .to_ascii_lowercase()
                    .contains("content-type: application/pkix-crl\r\n"),
                "{}",
                answer.headers
            );
            std::fs::write(&crl_der, &answer.body).unwrap();
            let out = openssl(
                dir,
                &[
                    "crl",
                    "-inform",
                    "DER",
                    "-in",
                    crl_der.to_str().unwrap(),
                    "-CAfile",
                    ca.to_str().unwrap(),
                    "-noout",
                    "-text",
                ],
            );
            let listing = text(&out);
            listing
                .contains(&format!("Serial Number: {serial}"))
                .then_some(listing)
        },
    );
    assert!(listing.contains("verify OK"), "{listing}");
    assert!(listing.contains("X509v3 CRL Number"), "{listing}");
    assert!(listing.contains("Next Update:"), "{listing}");

    let crl_pem = gw.path("crl.pem");
    openssl(
        dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            crl_der.to_str().unwrap(),
            "-out",
            crl_pem.to_str().unwrap(),
        ],
    );
    let (ok, out) = verify_with_crl(dir, &ca, &crl_pem, &revoked);
    assert!(!ok && out.contains("certificate revoked"), "{out}");
    let (ok, out) = verify_with_crl(dir, &ca, &crl_pem, &good);
    assert!(ok && out.contains(": OK"), "{out}");
}

#[test]
fn with_an_ephemeral_est_port_certificates_name_no_crl_distribution_point_but_the_crl_is_served() {
    let gw = Gateway::start("");
    let dir = gw.dir.path();
    let ext = crl_distribution_point(dir, &gw.data_dir().join("tls/server.crt"));
    assert!(!ext.contains("URI:"), "{ext}");
    let answer = curl(
        dir,
        &[
            "--cacert",
            gw.ca_cert().to_str().unwrap(),
            &format!("{}/crl", gw.est_url()),
        ],
    );
    assert_eq!(answer.status, 200, "{}", answer.body_text());
    let crl_der = gw.path("crl.der");
    std::fs::write(&crl_der, &answer.body).unwrap();
    let out = openssl(
        dir,
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            crl_der.to_str().unwrap(),
            "-CAfile",
            gw.ca_cert().to_str().unwrap(),
            "-noout",
            "-text",
        ],
    );
    let listing = text(&out);
    assert!(
        listing.contains("verify OK") && listing.contains("No Revoked Certificates."),
        "{listing}"
    );
}
