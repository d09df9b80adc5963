//! The standalone `noderax-testbed` binary: it listens where told, creates
//! a node install and prints a bootstrap token that works.

mod common;

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};

use serde_json::json;

#[tokio::test]
async fn prints_a_working_bootstrap_token() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_noderax-testbed"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--node-name",
            "bin-node",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert_eq!(
        first,
        format!("noderax-testbed listening on http://127.0.0.1:{port}")
    );
    let token_line = lines.next().unwrap().unwrap();
    let token = token_line
        .strip_prefix("bootstrap token: ")
        .unwrap()
        .to_owned();
    let rest: Vec<String> = lines.by_ref().take(5).map(Result::unwrap).collect();
    assert!(
        rest.iter()
            .any(|l| l.contains(&format!("--bootstrap-token {token}"))),
        "{rest:?}"
    );

    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let r = common::request(
        addr,
        "POST",
        "/api/v1/node-installs/consume",
        &[],
        Some(&json!({"token": token, "hostname": "bin-node-host"})),
    )
    .await
    .unwrap();
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.body["agentToken"].as_str().unwrap().len(), 64);
}
