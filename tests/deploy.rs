//! The deployment files stay valid: `systemd-analyze verify` accepts the unit with no warning
//! (skipped with a message where systemd-analyze is missing).

use std::process::Command;

/// The unit, with its `ExecStart` pointed at the binary this build made (verify checks that the
/// command exists), passes `systemd-analyze verify` without a single warning.
#[test]
fn the_systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/acestream-edge.service"
    ))
    .unwrap();
    assert!(unit.contains(
        "ExecStart=/usr/local/bin/acestream-edge -c /etc/acestream-edge/acestream-edge.yaml"
    ));
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acestream-edge.service");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/local/bin/acestream-edge",
            env!("CARGO_BIN_EXE_acestream-edge"),
        ),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.trim().is_empty(), "{text}");
}
