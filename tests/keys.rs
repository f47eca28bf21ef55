//! Keys sealed at rest, with the real binary: `rxgate init` with a key-encryption key seals the
//! CA, server and pseudonym keys; a copy of data_dir without that key mints nothing and every
//! command that needs a key refuses, saying where the key is looked for; the key as systemd
//! passes it (`$CREDENTIALS_DIRECTORY`) opens them; and `rxgate keys seal` migrates a data_dir
//! made without one.

use std::path::Path;
use std::process::Command;

use rxgate_e2e::{Gateway, bin, config_text, run, text};

fn generate_kek(path: &Path) {
    let out = run(Command::new(bin("rxgate"))
        .args(["keys", "generate-kek"])
        .arg(path));
    assert!(out.status.success(), "{}", text(&out));
}

/// Every file under `dir`, recursively.
fn files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else if path.extension().is_none_or(|e| e != "sock") {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// `rxgate --config CONFIG ARGS` with `env`.
fn rxgate(config: &Path, args: &[&str], env: &[(&str, &Path)]) -> std::process::Output {
    let mut cmd = Command::new(bin("rxgate"));
    cmd.arg("--config").arg(config).args(args);
    cmd.env_remove("CREDENTIALS_DIRECTORY");
    for (key, value) in env {
        cmd.env(key, value);
    }
    run(&mut cmd)
}

#[test]
fn a_copy_of_a_sealed_data_dir_without_its_key_encryption_key_refuses_every_command_that_needs_a_key()
 {
    let secrets = tempfile::tempdir().unwrap();
    let kek = secrets.path().join("kek");
    generate_kek(&kek);
    let mut gw = Gateway::init(&format!("[keys]\nkek_file = \"{}\"\n", kek.display()));
    let data = gw.data_dir();
    for sealed in [
        "ca/ca.key.sealed",
        "tls/server.key.sealed",
        "pseudonym.key.sealed",
    ] {
        assert!(data.join(sealed).exists(), "{sealed}");
    }
    for plain in ["ca/ca.key", "tls/server.key", "pseudonym.key"] {
        assert!(
            !data.join(plain).exists(),
            "{plain} is not left in plain text"
        );
    }
    for file in files(&data) {
        let bytes = std::fs::read(&file).unwrap();
        assert!(
            !bytes.windows(11).any(|w| w == b"PRIVATE KEY"),
            "{} holds a plain private key",
            file.display()
        );
    }
    let status = gw.cli_ok(&["keys", "status"]);
    assert!(status.contains("key-encryption key: available"), "{status}");
    assert!(status.contains("CA key          sealed"), "{status}");

    // With its key the gateway runs: a device enrolls (the CA signs) and the pseudonym works.
    gw.spawn();
    gw.enroll_with_sim("fridge-01", "fridge");
    let pseudonym = gw.cli_ok(&["pseudonym", "MRN-0012345"]);
    assert!(gw.stop(), "{}", gw.logs());

    // The directory copied without the key: every command that needs one refuses, clearly.
    let thief = tempfile::tempdir().unwrap();
    copy_dir(&data, &thief.path().join("data"));
    let config = thief.path().join("gateway.toml");
    std::fs::write(&config, config_text("store-0042", "")).unwrap();
    for args in [
        &["run"][..],
        &["pseudonym", "MRN-0012345"],
        &["init", "--force"],
    ] {
        let out = rxgate(&config, args, &[]);
        let said = text(&out);
        assert!(
            !out.status.success(),
            "rxgate {args:?} must refuse:\n{said}"
        );
        assert!(
            said.contains("is sealed and the key-encryption key is not available")
                && said.contains("CREDENTIALS_DIRECTORY")
                && said.contains("kek_file"),
            "rxgate {args:?}:\n{said}"
        );
    }
    let status = text(&rxgate(&config, &["keys", "status"], &[]));
    assert!(
        status.contains("key-encryption key: not available"),
        "{status}"
    );

    // The same copy with the key as systemd passes it to the service: it runs again.
    let credentials = tempfile::tempdir().unwrap();
    std::fs::copy(&kek, credentials.path().join("rxgate-kek")).unwrap();
    let env = [("CREDENTIALS_DIRECTORY", credentials.path())];
    let out = rxgate(&config, &["pseudonym", "MRN-0012345"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        pseudonym,
        "the same pseudonym key"
    );
    let out = rxgate(&config, &["audit", "verify"], &env);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn keys_seal_migrates_a_data_dir_made_without_a_key_encryption_key_and_the_gateway_still_runs() {
    let mut gw = Gateway::init("");
    let data = gw.data_dir();
    assert!(data.join("ca/ca.key").exists());
    let ca_key = std::fs::read(data.join("ca/ca.key")).unwrap();
    let pseudonym = gw.cli_ok(&["pseudonym", "MRN-7788990"]);
    let status = gw.cli_ok(&["keys", "status"]);
    assert!(status.contains("CA key          PLAIN"), "{status}");
    let out = gw.cli(&["keys", "seal"]);
    assert!(
        !out.status.success(),
        "nothing to seal with: {}",
        text(&out)
    );
    assert!(
        text(&out).contains("no key-encryption key"),
        "{}",
        text(&out)
    );

    let secrets = tempfile::tempdir().unwrap();
    let kek = secrets.path().join("kek");
    generate_kek(&kek);
    let mut config = std::fs::read_to_string(&gw.config).unwrap();
    config.push_str(&format!("\n[keys]\nkek_file = \"{}\"\n", kek.display()));
    std::fs::write(&gw.config, config).unwrap();
    let sealed = gw.cli_ok(&["keys", "seal"]);
    assert!(
        sealed.contains("Sealed: CA key, server key, pseudonym key."),
        "{sealed}"
    );
    assert!(!data.join("ca/ca.key").exists());
    let on_disk = std::fs::read(data.join("ca/ca.key.sealed")).unwrap();
    assert!(
        !on_disk
            .windows(ca_key.len())
            .any(|w| w == ca_key.as_slice())
    );
    assert_eq!(gw.cli_ok(&["pseudonym", "MRN-7788990"]), pseudonym);

    gw.spawn();
    gw.enroll_with_sim("fridge-01", "fridge");
    let audit = gw.cli_ok(&["audit", "export"]);
    assert!(audit.contains("keys.sealed"), "{audit}");
    assert!(gw.stop(), "{}", gw.logs());
}
