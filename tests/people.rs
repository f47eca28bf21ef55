//! Accounts end to end through the real binary: `rxgate user ...` over the admin socket and on
//! the store directly, and CLI actions attributed to the operating-system user who ran them.

use std::process::Command;
use std::time::Duration;

use redb::{ReadableTable, TableDefinition};
use rxgate_e2e::{Gateway, Proc, bin, start_ready, text, wait_until, whoami, workspace};

const PEOPLE: TableDefinition<&str, &[u8]> = TableDefinition::new("people");

fn users(gw: &Gateway) -> Vec<serde_json::Value> {
    serde_json::from_str(&gw.cli_ok(&["user", "list", "--json"])).expect("user list --json")
}

fn audit(gw: &Gateway, kind: &str) -> Vec<serde_json::Value> {
    let all: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["audit", "export"])).expect("audit export");
    all.into_iter().filter(|e| e["kind"] == kind).collect()
}

/// The token of a set-up link printed by `user add`: the only line on stdout.
fn setup_token(stdout: &str) -> String {
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "only the link on stdout: {stdout:?}");
    // The console's port: the one it is bound to while the daemon runs, else the configured.
    let token = lines[0]
        .strip_prefix("https://localhost:")
        .and_then(|rest| rest.split_once("/setup/"))
        .filter(|(port, _)| port.parse::<u16>().is_ok())
        .map(|(_, token)| token)
        .unwrap_or_else(|| panic!("a set-up link: {stdout:?}"));
    assert_eq!(token.len(), 43, "256 bits, base64url: {token}");
    assert!(
        token
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    );
    token.to_owned()
}

#[test]
fn no_account_exists_after_init_and_user_list_says_how_to_create_the_first() {
    let gw = Gateway::init("");
    assert_eq!(users(&gw), Vec::<serde_json::Value>::new());
    assert_eq!(
        gw.cli_ok(&["user", "list"]),
        "no accounts; create the first with `rxgate user add NAME --role admin`\n"
    );
}

#[test]
fn user_add_prints_a_one_time_setup_link_and_user_list_json_shows_roles_expiry_and_state() {
    let gw = Gateway::start("");
    let me = whoami();
    let output = gw.cli(&[
        "user",
        "add",
        "alvarez",
        "--role",
        "pharmacist",
        "--role",
        "technician",
    ]);
    assert!(output.status.success(), "{}", text(&output));
    let first = setup_token(&String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.starts_with(
            "account alvarez (pharmacist,technician) is pending set-up; give the link above to that person only"
        ),
        "{stderr}"
    );
    let second = setup_token(&gw.cli_ok(&[
        "user",
        "add",
        "insp-weber",
        "--role",
        "inspector",
        "--expires",
        "2099-12-31",
    ]));
    assert_ne!(first, second);

    let listed = users(&gw);
    let summary: Vec<_> = listed
        .iter()
        .map(|u| {
            (
                u["name"].clone(),
                u["roles"].clone(),
                u["state"].clone(),
                u["expires_on"].clone(),
                u["totp"].clone(),
                u["recovery_codes_left"].clone(),
                u["created_by"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "alvarez".into(),
                serde_json::json!(["pharmacist", "technician"]),
                "pending".into(),
                serde_json::Value::Null,
                false.into(),
                0.into(),
                me.as_str().into()
            ),
            (
                "insp-weber".into(),
                serde_json::json!(["inspector"]),
                "pending".into(),
                "2099-12-31".into(),
                false.into(),
                0.into(),
                me.as_str().into()
            ),
        ]
    );
    let added = audit(&gw, "user.added");
    assert_eq!(added.len(), 2);
    assert_eq!(added[0]["actor"], me.as_str());
    assert_eq!(added[0]["detail"]["user"], "alvarez");
    assert_eq!(added[1]["detail"]["expires_on"], "2099-12-31");
    // The token is in the link only: neither the store nor the audit trail holds it.
    let export = gw.cli_ok(&["audit", "export"]);
    assert!(!export.contains(&first) && !export.contains(&second));
}

#[test]
fn an_inspector_without_an_expiry_date_and_a_malformed_date_are_refused_with_the_fix() {
    let gw = Gateway::init("");
    for (args, expected) in [
        (
            vec!["user", "add", "insp", "--role", "inspector"],
            "error: an inspector account needs the date it expires (--expires YYYY-MM-DD)\n",
        ),
        (
            vec![
                "user",
                "add",
                "insp",
                "--role",
                "inspector",
                "--expires",
                "31/12/2099",
            ],
            "error: --expires \"31/12/2099\": expected a date like 2026-07-31 (YYYY-MM-DD)\n",
        ),
        (
            vec!["user", "add", "someone", "--role", "root"],
            "error: \"root\" is not a role; use admin, pharmacist, technician, installer or inspector\n",
        ),
    ] {
        let output = gw.cli(&args);
        assert!(!output.status.success(), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            expected,
            "{args:?}"
        );
    }
    assert_eq!(users(&gw), Vec::<serde_json::Value>::new());
}

/// Sets the stored state of `name` (the daemon must not hold the store).
fn set_state(gw: &Gateway, name: &str, state: &str, failures: u32) {
    let db = redb::Database::open(gw.data_dir().join("rxgate.redb")).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(PEOPLE).unwrap();
        let mut account: serde_json::Value =
            serde_json::from_slice(table.get(name).unwrap().unwrap().value()).unwrap();
        account["state"] = state.into();
        account["failed_sign_ins"] = failures.into();
        table
            .insert(name, serde_json::to_vec(&account).unwrap().as_slice())
            .unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn disabling_unlocking_and_resetting_factors_are_audited_under_the_os_user_with_or_without_the_daemon()
 {
    let mut gw = Gateway::init("");
    let me = whoami();
    // No daemon: the CLI opens the store and acts as its own user.
    gw.cli_ok(&["user", "add", "locked-out", "--role", "installer"]);
    gw.cli_ok(&["user", "add", "leaver", "--role", "technician"]);
    set_state(&gw, "locked-out", "locked", 10);

    gw.spawn();
    assert_eq!(
        gw.cli_ok(&["user", "unlock", "locked-out"]),
        "account locked-out is now active\n"
    );
    assert_eq!(
        gw.cli_ok(&["user", "disable", "leaver"]),
        "account leaver is now disabled\n"
    );
    let again = gw.cli(&["user", "unlock", "leaver"]);
    assert!(!again.status.success());
    assert_eq!(
        String::from_utf8_lossy(&again.stderr),
        "error: account leaver is disabled, not locked; nothing to unlock\n"
    );
    let states: Vec<_> = users(&gw)
        .iter()
        .map(|u| {
            (
                u["name"].clone(),
                u["state"].clone(),
                u["failed_sign_ins"].clone(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            ("leaver".into(), "disabled".into(), 0.into()),
            ("locked-out".into(), "active".into(), 0.into()),
        ]
    );
    assert!(gw.stop());
    // Daemon stopped again: the direct path.
    setup_token(&gw.cli_ok(&["user", "reset-factors", "locked-out"]));

    let unlocked = audit(&gw, "user.unlocked");
    assert_eq!(unlocked.len(), 1);
    assert_eq!(unlocked[0]["actor"], me.as_str());
    assert_eq!(
        unlocked[0]["detail"],
        serde_json::json!({"user": "locked-out", "failed_sign_ins": 10})
    );
    let disabled = audit(&gw, "user.disabled");
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0]["actor"], me.as_str());
    assert_eq!(
        disabled[0]["detail"],
        serde_json::json!({"user": "leaver", "was": "pending"})
    );
    let reset = audit(&gw, "user.factors_reset");
    assert_eq!(reset.len(), 1);
    assert_eq!(reset[0]["actor"], me.as_str());
    assert_eq!(reset[0]["detail"]["was"], "active");
    assert_eq!(
        audit(&gw, "gateway.initialised")[0]["actor"],
        me.as_str(),
        "init too is the OS user's action"
    );
}

/// A fridge whose compressor fails at once, time 600 times faster.
fn failing_fridge() -> (Proc, u16) {
    let mut cmd = Command::new(bin("rxgate-sim"));
    cmd.args([
        "fridge",
        "--tcp",
        "127.0.0.1:0",
        "--setpoint",
        "5",
        "--speed",
        "600",
        "--fault",
        "compressor-failure@1s",
    ]);
    start_ready(cmd, "rxgate-sim fridge")
}

#[test]
fn alerts_ack_takes_no_by_and_records_the_os_user_as_the_acknowledger() {
    let (_fridge, port) = failing_fridge();
    let gw = Gateway::start(&format!(
        "[devices.fridge-01]\ntransport = \"tcp\"\naddress = \"127.0.0.1:{port}\"\nmodel = \"{}\"\n\
         poll_interval = \"500ms\"\ntimeout = \"300ms\"\nprofile = \"refrigerator\"\nalarm_delay = \"3s\"\n",
        workspace().join("config/devices/acme-fr400.toml").display()
    ));
    let id = wait_until(Duration::from_secs(60), "the fridge's alert", || {
        let alerts: Vec<serde_json::Value> =
            serde_json::from_str(&gw.cli_ok(&["alerts", "list", "--json"])).ok()?;
        alerts.first()?["id"].as_str().map(str::to_owned)
    });
    let refused = gw.cli(&[
        "alerts",
        "ack",
        &id,
        "--by",
        "Dr. Okafor",
        "--note",
        "moved",
    ]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("unexpected argument '--by'"),
        "{}",
        text(&refused)
    );
    let me = whoami();
    let done = gw.cli_ok(&[
        "alerts",
        "ack",
        &id,
        "--note",
        "stock moved to the backup fridge",
    ]);
    assert!(
        done.starts_with(&format!("alert {id} ("))
            && done.contains(&format!(") acknowledged by {me}: now ")),
        "{done}"
    );
    let acks = audit(&gw, "alert.acknowledged");
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["actor"], me.as_str());
    assert_eq!(
        acks[0]["detail"]["note"],
        "stock moved to the backup fridge"
    );
    let alerts: Vec<serde_json::Value> =
        serde_json::from_str(&gw.cli_ok(&["alerts", "list", "--all", "--json"])).unwrap();
    assert_eq!(alerts[0]["acknowledged_by"], me.as_str());
}
