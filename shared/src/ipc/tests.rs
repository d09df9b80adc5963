use std::io::Cursor;
use std::time::Duration;

use proptest::prelude::*;

use super::codec::{self, CodecError, FrameDecoder, MAX_FRAME_LEN};
use super::*;

const TASK: &str = "ec9f97f2-7b56-4a7e-a7cb-5c957e9d32d8";
const SESSION: &str = "b7f88611-b63e-4c95-9f37-4afb5c0cf275";

fn exit() -> TaskExit {
    TaskExit {
        task_id: TASK.into(),
        last_seq: 42,
        outcome: Outcome::Failed,
        exit_code: 2,
        duration: Duration::from_millis(7032),
        error: Some("exit status 2".into()),
        result_json: Some(r#"{"packages":[]}"#.into()),
        dropped_bytes: 0,
    }
}

/// One of every message agent-net sends.
fn every_net_message() -> Vec<NetMessage> {
    let specs = vec![
        TaskSpec::Shell {
            command: "echo hi; exit 3".into(),
            shell: Some("/bin/bash".into()),
            working_dir: Some("/tmp".into()),
            environment: vec![("A".into(), "1".into()), ("B".into(), "".into())],
        },
        TaskSpec::PackageList,
        TaskSpec::PackageSearch {
            terms: vec!["nginx".into(), "proxy".into()],
        },
        TaskSpec::PackageChange {
            op: PackageOp::Install,
            names: vec!["nginx".into(), "g++".into()],
        },
        TaskSpec::PackageChange {
            op: PackageOp::Remove,
            names: vec!["nginx".into()],
        },
        TaskSpec::PackageChange {
            op: PackageOp::Purge,
            names: vec!["nginx".into()],
        },
        TaskSpec::ApplyUpdate {
            version: "1.0.3".into(),
            target_id: SESSION.into(),
            rollback: true,
        },
    ];
    let mut out: Vec<NetMessage> = specs
        .into_iter()
        .map(|spec| {
            NetMessage::RunTask(RunTask {
                task_id: TASK.into(),
                spec,
                timeout: Duration::from_secs(600),
                root_profile: crate::api::RootProfile::Operational,
            })
        })
        .collect();
    out.extend([
        NetMessage::Hello(Hello::current()),
        NetMessage::CancelTask {
            task_id: TASK.into(),
            reason: "Stopped by operator".into(),
        },
        NetMessage::AckOutput {
            task_id: TASK.into(),
            seq: u64::MAX,
        },
        NetMessage::Replay {
            task_id: TASK.into(),
            after_seq: 7,
        },
        NetMessage::ForgetTask {
            task_id: TASK.into(),
        },
        NetMessage::TerminalOpen(TerminalOpen {
            session_id: SESSION.into(),
            cols: 120,
            rows: 34,
        }),
        NetMessage::TerminalInput {
            session_id: SESSION.into(),
            bytes: vec![0x03, b'l', b's', b'\n', 0xff],
        },
        NetMessage::TerminalResize {
            session_id: SESSION.into(),
            cols: 400,
            rows: 200,
        },
        NetMessage::TerminalClose {
            session_id: SESSION.into(),
            reason: None,
        },
        NetMessage::TerminalClose {
            session_id: SESSION.into(),
            reason: Some("Operator requested stop".into()),
        },
        NetMessage::TerminalAck {
            session_id: SESSION.into(),
            seq: 3,
        },
    ]);
    out
}

/// One of every message agent-exec sends.
fn every_exec_message() -> Vec<ExecMessage> {
    let mut out = vec![
        ExecMessage::Hello(Hello::current()),
        ExecMessage::Inventory(Inventory::default()),
        ExecMessage::Inventory(Inventory {
            tasks: vec![
                TaskState {
                    task_id: TASK.into(),
                    last_seq: 9,
                    exit: None,
                },
                TaskState {
                    task_id: SESSION.into(),
                    last_seq: 42,
                    exit: Some(exit()),
                },
            ],
            terminals: vec![TerminalState {
                session_id: SESSION.into(),
                last_seq: 1,
            }],
        }),
        ExecMessage::TaskStarted {
            task_id: TASK.into(),
            pid: 4242,
        },
        ExecMessage::TaskExited(exit()),
        ExecMessage::Refused {
            request: "RunTask".into(),
            reason: "4 tasks are already running".into(),
        },
        ExecMessage::TerminalOutput {
            session_id: SESSION.into(),
            seq: 1,
            bytes: b"\x1b[1mhi\x1b[0m".to_vec(),
        },
        ExecMessage::TerminalExited {
            session_id: SESSION.into(),
            exit_code: 0,
            reason: None,
        },
        ExecMessage::TerminalError {
            session_id: SESSION.into(),
            message: "terminal session was not found".into(),
        },
    ];
    for stream in [
        OutputStream::Stdout,
        OutputStream::Stderr,
        OutputStream::System,
    ] {
        out.push(ExecMessage::TaskOutput(TaskOutput {
            task_id: TASK.into(),
            seq: 1,
            stream,
            bytes: (0..=255).collect(),
        }));
    }
    for outcome in [
        Outcome::Success,
        Outcome::Failed,
        Outcome::Cancelled,
        Outcome::TimedOut,
    ] {
        out.push(ExecMessage::TaskExited(TaskExit { outcome, ..exit() }));
    }
    for mode in [
        PtyMode::ControllingTty,
        PtyMode::NoControllingTty,
        PtyMode::Minimal,
    ] {
        out.push(ExecMessage::TerminalOpened {
            session_id: SESSION.into(),
            cols: 120,
            rows: 34,
            mode,
        });
    }
    out
}

#[test]
fn every_message_round_trips() {
    for msg in every_net_message() {
        let frame = codec::encode(&msg).unwrap();
        let back: NetMessage = codec::decode(&frame[4..]).unwrap();
        assert_eq!(back, msg);
    }
    for msg in every_exec_message() {
        let frame = codec::encode(&msg).unwrap();
        let back: ExecMessage = codec::decode(&frame[4..]).unwrap();
        assert_eq!(back, msg);
    }
}

#[test]
fn a_stream_of_frames_reads_back_in_order() {
    let msgs = every_exec_message();
    let mut stream = Vec::new();
    for m in &msgs {
        write_message(&mut stream, m).unwrap();
    }
    // Blocking reader.
    let mut cursor = Cursor::new(stream.clone());
    for m in &msgs {
        let got: ExecMessage = read_message(&mut cursor).unwrap().unwrap();
        assert_eq!(&got, m);
    }
    assert!(
        read_message::<_, ExecMessage>(&mut cursor)
            .unwrap()
            .is_none()
    );

    // Incremental decoder fed one byte at a time.
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    for b in &stream {
        dec.push(std::slice::from_ref(b));
        while let Some(m) = dec.next_message::<ExecMessage>().unwrap() {
            got.push(m);
        }
    }
    assert_eq!(got, msgs);
    assert_eq!(dec.buffered(), 0);
}

#[test]
fn a_full_output_chunk_fits_in_a_frame() {
    let msg = ExecMessage::TaskOutput(TaskOutput {
        task_id: TASK.into(),
        seq: u64::MAX,
        stream: OutputStream::Stdout,
        bytes: vec![0xff; MAX_OUTPUT_CHUNK],
    });
    let frame = codec::encode(&msg).unwrap();
    assert!(frame.len() <= MAX_FRAME_LEN + 4);
    // Bytes travel as they are: one length, then the raw bytes (not three
    // bytes per value from 251 up, as a plain sequence of u8 would).
    assert!(frame.len() < MAX_OUTPUT_CHUNK + 64, "{}", frame.len());
    assert_eq!(codec::decode::<ExecMessage>(&frame[4..]).unwrap(), msg);
}

#[test]
fn oversized_frames_are_rejected_before_allocation() {
    // A header claiming 4 GiB: refused from the header alone.
    let mut dec = FrameDecoder::new();
    dec.push(&u32::MAX.to_le_bytes());
    assert!(matches!(
        dec.next_message::<NetMessage>(),
        Err(CodecError::TooLarge(n)) if n == u32::MAX as usize
    ));
    let mut cursor = Cursor::new(((MAX_FRAME_LEN + 1) as u32).to_le_bytes().to_vec());
    assert!(matches!(
        read_message::<_, NetMessage>(&mut cursor),
        Err(CodecError::TooLarge(_))
    ));
    // Encoding a message over the limit is an error, not a huge frame.
    let too_big = NetMessage::TerminalInput {
        session_id: SESSION.into(),
        bytes: vec![0; MAX_FRAME_LEN + 1],
    };
    assert!(matches!(
        codec::encode(&too_big),
        Err(CodecError::TooLarge(_))
    ));
}

#[test]
fn a_length_inside_a_frame_cannot_force_a_large_allocation() {
    // Variant TerminalInput (index 7), a short session id, then a byte
    // vector claiming u64::MAX elements (bincode varint: 253 + 8 bytes).
    let mut payload = vec![7u8, 1, b's', 253];
    payload.extend_from_slice(&u64::MAX.to_le_bytes());
    // Were the claimed length allocated up front, this would abort the
    // test process; it must end in a plain decode error instead.
    assert!(matches!(
        codec::decode::<NetMessage>(&payload),
        Err(CodecError::Decode(_))
    ));
    // The same with a claim just under the frame limit but no data.
    let mut payload = vec![7u8, 1, b's', 252];
    payload.extend_from_slice(&((MAX_FRAME_LEN as u32) - 1).to_le_bytes());
    assert!(matches!(
        codec::decode::<NetMessage>(&payload),
        Err(CodecError::Decode(_))
    ));
}

#[test]
fn truncated_and_trailing_input_are_errors() {
    let frame = codec::encode(&NetMessage::Hello(Hello::current())).unwrap();
    let mut cursor = Cursor::new(frame[..frame.len() - 1].to_vec());
    assert!(matches!(
        read_message::<_, NetMessage>(&mut cursor),
        Err(CodecError::Truncated)
    ));
    let mut cursor = Cursor::new(frame[..2].to_vec());
    assert!(matches!(
        read_message::<_, NetMessage>(&mut cursor),
        Err(CodecError::Truncated)
    ));
    let mut payload = frame[4..].to_vec();
    payload.push(0);
    assert!(matches!(
        codec::decode::<NetMessage>(&payload),
        Err(CodecError::Trailing(1))
    ));
    assert!(matches!(
        codec::decode::<NetMessage>(&[]),
        Err(CodecError::Empty)
    ));
    // An unknown variant index.
    assert!(matches!(
        codec::decode::<NetMessage>(&[200]),
        Err(CodecError::Decode(_))
    ));
}

#[test]
fn handshake_refuses_another_major_version() {
    assert!(check_peer(&Hello::current()).is_ok());
    let newer_minor = Hello {
        protocol_minor: PROTOCOL_MINOR + 1,
        ..Hello::current()
    };
    assert!(check_peer(&newer_minor).is_ok());
    let other = Hello {
        protocol_major: PROTOCOL_MAJOR + 1,
        agent_version: "9.0.0".into(),
        pid: 77,
        ..Hello::current()
    };
    let err = check_peer(&other).unwrap_err().to_string();
    assert!(
        err.contains("pid 77") && err.contains("9.0.0") && err.contains("same release"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn random_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        // Drain until it needs more input or reports an error.
        while let Ok(Some(_)) = dec.next_message::<NetMessage>() {}
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        while let Ok(Some(_)) = dec.next_message::<ExecMessage>() {}
        let _ = read_message::<_, ExecMessage>(&mut Cursor::new(&bytes));
    }

    #[test]
    fn random_payloads_behind_a_valid_header_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let _ = codec::decode::<NetMessage>(&payload);
        let _ = codec::decode::<ExecMessage>(&payload);
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..64,
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let msgs = every_exec_message();
        let mut frame = codec::encode(&msgs[which % msgs.len()]).unwrap();
        for (pos, byte) in flips {
            let i = 4 + pos % (frame.len() - 4);
            frame[i] = byte;
        }
        let _ = codec::decode::<ExecMessage>(&frame[4..]);
        let _ = codec::decode::<NetMessage>(&frame[4..]);
    }
}
