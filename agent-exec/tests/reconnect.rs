//! The network process goes away mid-task and comes back: every byte is
//! delivered exactly once; peers are checked; output spills to disk and any
//! loss beyond the bounds is counted.

mod common;

use std::time::Duration;

use common::{Collected, Exec, checksum, shell, task_id};
use shared::ipc::{ExecMessage, NetMessage, Outcome};

const MINUTE: Duration = Duration::from_secs(60);

fn expected_lines(n: u32) -> Vec<u8> {
    (1..=n)
        .flat_map(|i| format!("line {i}\n").into_bytes())
        .collect()
}

fn reconnect_and_replay(exec: &Exec, out: &mut Collected, id: &str, after: u64) {
    let mut c = exec.connect();
    let state = c
        .inventory
        .tasks
        .iter()
        .find(|t| t.task_id == id)
        .expect("the task is in the inventory")
        .clone();
    assert!(state.last_seq >= after);
    c.send(&NetMessage::Replay {
        task_id: id.into(),
        after_seq: after,
    });
    out.last_seq = after;
    c.collect_into(id, out, |_| false);
}

#[test]
fn replay_after_a_dropped_connection_delivers_every_byte_exactly_once() {
    let exec = Exec::start(&[]);
    let id = task_id(1);
    let mut c = exec.connect();
    c.run(
        &id,
        shell("i=1; while [ $i -le 3000 ]; do echo line $i; i=$((i+1)); if [ $((i % 100)) = 0 ]; then sleep 0.01; fi; done"),
        MINUTE,
    );
    // Store (and acknowledge) a part, then lose the connection while the
    // task keeps writing.
    let mut out = Collected::default();
    c.collect_into(&id, &mut out, |o| o.stdout.len() > 4000);
    assert!(
        out.exit.is_none(),
        "the task must still run when the connection drops"
    );
    drop(c);
    std::thread::sleep(Duration::from_millis(300));
    // The new peer has everything it received (acknowledged or not) stored.
    let stored = out.last_seq;
    reconnect_and_replay(&exec, &mut out, &id, stored);
    let expected = expected_lines(3000);
    assert_eq!(out.stdout.len(), expected.len());
    assert_eq!(checksum(&out.stdout), checksum(&expected));
    assert!(out.stdout == expected);
    assert_eq!(out.exit().outcome, Outcome::Success);
}

#[test]
fn replay_from_the_last_acknowledged_chunk_resends_what_was_not_stored() {
    let exec = Exec::start(&[]);
    let id = task_id(2);
    let mut c = exec.connect();
    c.run(
        &id,
        shell("seq 1 200000; sleep 0.5; seq 200001 300000"),
        MINUTE,
    );
    // Receive three chunks, acknowledge the first two; the third arrived
    // but the peer dies before storing it.
    let mut out = Collected::default();
    c.collect_into(&id, &mut out, |o| o.last_seq >= 3);
    let acked = out.last_seq - 1;
    drop(c);
    // Chunks before the acknowledged one are gone and cannot be replayed.
    let mut c = exec.connect();
    c.send(&NetMessage::Replay {
        task_id: id.clone(),
        after_seq: 0,
    });
    match c.recv() {
        ExecMessage::Refused { reason, .. } => {
            assert!(reason.contains("acknowledged"), "{reason}")
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    drop(c);
    // Replay after the acknowledged chunk: chunk 3 comes again, then the rest.
    let mut replayed = Collected {
        last_seq: acked,
        ..Collected::default()
    };
    let mut c = exec.connect();
    c.send(&NetMessage::Replay {
        task_id: id.clone(),
        after_seq: acked,
    });
    c.collect_into(&id, &mut replayed, |_| false);
    let expected: Vec<u8> = (1..=300_000)
        .flat_map(|i: u32| format!("{i}\n").into_bytes())
        .collect();
    // What the peer stored (chunks 1..=acked) plus the replay is the output,
    // and the replay starts with the chunk it had received but not stored.
    let stored_len = expected.len() - replayed.stdout.len();
    assert!(
        stored_len < out.stdout.len(),
        "chunk 3 is part of the replay"
    );
    assert!(out.stdout[..stored_len] == expected[..stored_len]);
    assert!(replayed.stdout.starts_with(&out.stdout[stored_len..]));
    let mut whole = out.stdout[..stored_len].to_vec();
    whole.extend_from_slice(&replayed.stdout);
    assert_eq!(checksum(&whole), checksum(&expected));
    assert!(whole == expected);
    assert_eq!(replayed.exit().outcome, Outcome::Success);
}

#[test]
fn output_beyond_the_memory_bound_spills_to_disk_and_is_delivered_later() {
    let exec = Exec::start(&["--output-memory-bytes", "100000"]);
    let id = task_id(3);
    let mut c = exec.connect();
    c.run(&id, shell("seq 1 400000"), MINUTE);
    // Do not read: the executor must keep everything on disk meanwhile.
    std::thread::sleep(Duration::from_millis(1500));
    let spill = exec.spill_dir().join(format!("{id}.spill"));
    let size = std::fs::metadata(&spill).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 1_000_000,
        "spill file {} holds {size} bytes",
        spill.display()
    );
    let got = c.collect(&id);
    let expected: Vec<u8> = (1..=400_000)
        .flat_map(|i: u32| format!("{i}\n").into_bytes())
        .collect();
    assert!(got.stdout == expected);
    assert_eq!(got.exit().dropped_bytes, 0);
    c.send(&NetMessage::ForgetTask {
        task_id: id.clone(),
    });
    // Forgetting the task removes its spill file.
    c.run(&task_id(4), shell("true"), MINUTE);
    c.collect(&task_id(4));
    assert!(!spill.exists());
}

#[test]
fn output_beyond_every_bound_is_counted_exactly_and_reported() {
    let exec = Exec::start(&[
        "--output-memory-bytes",
        "1000",
        "--output-spill-bytes",
        "1000",
    ]);
    let id = task_id(5);
    let mut c = exec.connect();
    // 10 000 bytes in 10 writes of 1000 bytes each, while nobody acknowledges.
    c.run(
        &id,
        shell("for i in 1 2 3 4 5 6 7 8 9 10; do head -c 1000 /dev/zero; sleep 0.05; done"),
        MINUTE,
    );
    // Read everything without acknowledging anything.
    let mut stdout = 0usize;
    let mut system = String::new();
    let exit = loop {
        match c.recv() {
            ExecMessage::TaskOutput(o) => match o.stream {
                shared::ipc::OutputStream::Stdout => stdout += o.bytes.len(),
                _ => system.push_str(&String::from_utf8_lossy(&o.bytes)),
            },
            ExecMessage::TaskExited(e) => break e,
            _ => {}
        }
    };
    assert_eq!(stdout as u64 + exit.dropped_bytes, 10_000);
    assert!(exit.dropped_bytes >= 8_000, "{exit:?}");
    assert_eq!(exit.outcome, Outcome::Success);
}

#[test]
fn a_peer_with_another_uid_is_refused_and_the_right_one_still_gets_in() {
    use std::os::unix::fs::PermissionsExt;
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipped: needs root to connect as another user");
        return;
    }
    let exec = Exec::start(&[]);
    // Let `nobody` reach the socket so that only SO_PEERCRED can refuse it.
    std::fs::set_permissions(exec.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&exec.socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let hello =
        shared::ipc::codec::encode(&NetMessage::Hello(shared::ipc::Hello::current())).unwrap();
    let path = std::ffi::CString::new(exec.socket.as_os_str().as_encoded_bytes()).unwrap();
    // The child only makes async-signal-safe calls: it drops to nobody,
    // connects, sends Hello and reports what came back as its exit code:
    // 0 = closed without a single byte, 1 = got data, 2+ = setup failed.
    // SAFETY: see above; the parent waits for it.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        unsafe {
            if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                libc::_exit(2);
            }
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
            let mut addr: libc::sockaddr_un = std::mem::zeroed();
            addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
            let bytes = path.as_bytes_with_nul();
            for (i, b) in bytes.iter().enumerate() {
                addr.sun_path[i] = *b as libc::c_char;
            }
            if libc::connect(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) != 0
            {
                libc::_exit(3);
            }
            libc::write(fd, hello.as_ptr().cast(), hello.len());
            let mut buf = [0u8; 16];
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            // EOF or a reset (the executor closed with our Hello unread).
            libc::_exit(if n > 0 { 1 } else { 0 });
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status));
    assert_eq!(
        libc::WEXITSTATUS(status),
        0,
        "the wrong-uid peer got an answer"
    );
    assert!(exec.log().contains("refused IPC peer"), "{}", exec.log());
    assert!(exec.log().contains("uid 65534"), "{}", exec.log());
    let mut c = exec.connect();
    c.run(&task_id(6), shell("echo ok"), MINUTE);
    assert_eq!(c.collect(&task_id(6)).stdout, b"ok\n");
}

#[test]
fn a_new_peer_takes_over_from_a_stale_connection() {
    let exec = Exec::start(&[]);
    let mut old = exec.connect();
    old.run(&task_id(7), shell("sleep 0.3; echo late"), MINUTE);
    loop {
        if let ExecMessage::TaskStarted { .. } = old.recv() {
            break;
        }
    }
    // A second connection while the first is still open (e.g. the old
    // network process hangs): the new one is served.
    let mut new = exec.connect();
    assert_eq!(new.inventory.tasks.len(), 1);
    new.send(&NetMessage::Replay {
        task_id: task_id(7),
        after_seq: 0,
    });
    let got = new.collect(&task_id(7));
    assert_eq!(got.stdout, b"late\n");
    // The old connection was closed by the executor.
    old.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while let Some(msg) = old.try_recv() {
        assert!(!matches!(msg, ExecMessage::TaskExited(_)), "{msg:?}");
    }
}

#[test]
fn only_the_configured_peer_user_is_served() {
    // Only `nobody` may connect; this test's own uid is refused.
    let exec = Exec::start(&["--peer-user", "nobody"]);
    let mut s = std::os::unix::net::UnixStream::connect(&exec.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // The executor may already have closed the refused connection, in which
    // case the write fails (broken pipe): that is a refusal too.
    let wrote =
        shared::ipc::write_message(&mut s, &NetMessage::Hello(shared::ipc::Hello::current()));
    let answer = shared::ipc::read_message::<_, ExecMessage>(&mut s);
    assert!(
        matches!(answer, Ok(None) | Err(_)),
        "a refused peer gets no answer: {answer:?} (hello written: {wrote:?})"
    );
    assert!(exec.log().contains("refused IPC peer"), "{}", exec.log());
}

#[test]
fn garbage_and_an_incompatible_hello_close_only_that_connection() {
    use std::io::Write;
    let exec = Exec::start(&[]);
    // A frame that does not decode.
    let mut s = std::os::unix::net::UnixStream::connect(&exec.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff])
        .unwrap();
    let hello = shared::ipc::read_message::<_, ExecMessage>(&mut s).unwrap();
    assert!(matches!(hello, Some(ExecMessage::Hello(_))));
    assert!(matches!(
        shared::ipc::read_message::<_, ExecMessage>(&mut s),
        Ok(None) | Err(_)
    ));
    // A peer of another protocol major version.
    let mut s = std::os::unix::net::UnixStream::connect(&exec.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut other = shared::ipc::Hello::current();
    other.protocol_major += 1;
    shared::ipc::write_message(&mut s, &NetMessage::Hello(other)).unwrap();
    let _ = shared::ipc::read_message::<_, ExecMessage>(&mut s);
    assert!(matches!(
        shared::ipc::read_message::<_, ExecMessage>(&mut s),
        Ok(None) | Err(_)
    ));
    assert!(exec.log().contains("speaks IPC protocol"), "{}", exec.log());
    // The executor still serves a proper peer.
    let mut c = exec.connect();
    c.run(&task_id(8), shell("echo still here"), MINUTE);
    assert_eq!(c.collect(&task_id(8)).stdout, b"still here\n");
}

#[test]
fn a_socket_activated_listener_is_served() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let fd = listener.as_raw_fd();
    // systemd's contract: the socket on fd 3, LISTEN_FDS=1 and LISTEN_PID
    // naming the executor itself (the shell execs into it, keeping its pid).
    let mut cmd = std::process::Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" --state-dir \"$1\"")
        .arg(common::BIN)
        .arg(dir.path().join("state"))
        .stderr(std::process::Stdio::null());
    // SAFETY: dup2 is async-signal-safe; it runs in the child only.
    // When the listener already is fd 3, dup2 would be a no-op that keeps
    // close-on-exec; clear the flag instead.
    unsafe {
        cmd.pre_exec(move || {
            let rc = if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0)
            } else {
                libc::dup2(fd, 3)
            };
            if rc == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(listener);
    let mut c = common::Client::connect(&path);
    c.run(&task_id(9), shell("echo activated"), MINUTE);
    assert_eq!(c.collect(&task_id(9)).stdout, b"activated\n");
    child.kill().unwrap();
    child.wait().unwrap();
}
