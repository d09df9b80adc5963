//! Task delivery from disk to the testbed control plane: everything arrives,
//! in order, within the API's limits, through outages and restarts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use noderax_agent::api_client::ApiClient;
use noderax_agent::task_journal::TaskJournal;
use noderax_agent::task_report::{Delivery, ExitRecord, TaskRecord, TaskReporter};
use serde_json::json;
use shared::api::task::{CompletionStatus, LogStream};
use shared::identity::Identity;
use shared::timestamp::Timestamp;
use testbed::{Testbed, TestbedConfig};
use tokio::sync::Notify;

struct Setup {
    tb: Testbed,
    client: ApiClient,
    task_id: String,
    dir: tempfile::TempDir,
}

/// A running task on the testbed and an empty task directory.
async fn setup() -> Setup {
    let tb = Testbed::start(TestbedConfig::default()).await.unwrap();
    let (node_id, agent_token) = tb.create_node("reporter");
    let tls = noderax_agent::tls::client_config(None).unwrap();
    let client = ApiClient::new(&tb.api_url(), tls, Duration::from_secs(5))
        .unwrap()
        .with_identity(&Identity {
            node_id: node_id.clone(),
            agent_token,
        });
    let task_id = tb
        .create_task(&node_id, "shell.exec", json!({"command": "seq"}))
        .unwrap();
    let claim: serde_json::Value = client
        .post("/agent/tasks/claim", &json!({"maxTasks": 1, "waitMs": 0}))
        .await
        .unwrap();
    assert_eq!(claim["task"]["id"], task_id);
    let _: serde_json::Value = client
        .post(
            &format!("/agent/tasks/{task_id}/started"),
            &json!({"taskId": task_id}),
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    TaskRecord {
        task_id: task_id.clone(),
        task_type: "shell.exec".into(),
        exit: None,
        completed_sent: false,
        ended: None,
    }
    .save(dir.path())
    .unwrap();
    Setup {
        tb,
        client,
        task_id,
        dir,
    }
}

fn exit(status: CompletionStatus, code: i32) -> ExitRecord {
    ExitRecord {
        status,
        exit_code: code,
        duration_ms: 1234,
        error: (code != 0).then(|| format!("exit status {code}")),
        result: None,
        finished_at: Timestamp::now(),
    }
}

fn record_exit(dir: &std::path::Path, e: ExitRecord) {
    let mut r = TaskRecord::load(dir).unwrap().unwrap();
    r.exit = Some(e);
    r.save(dir).unwrap();
}

/// Writes `n` numbered lines to stdout in uneven chunks; returns them.
fn write_lines(j: &mut TaskJournal, n: usize, seq: &mut u64) -> Vec<String> {
    let lines: Vec<String> = (0..n)
        .map(|i| format!("line {i:07} {}", "x".repeat(i % 70)))
        .collect();
    let mut blob = String::new();
    for l in &lines {
        blob.push_str(l);
        blob.push('\n');
    }
    for chunk in blob.as_bytes().chunks(4093) {
        *seq += 1;
        j.append(LogStream::Stdout, *seq, chunk).unwrap();
    }
    j.sync().unwrap();
    lines
}

/// Every row of the task on the testbed, split back into lines.
fn received_lines(tb: &testbed::Control, task_id: &str, stream: &str) -> Vec<String> {
    let rows = tb.task_logs_all(task_id);
    for r in &rows {
        let n = r.message.chars().count();
        assert!((1..=5000).contains(&n), "a row of {n} characters");
        assert!(
            !r.message.split('\n').any(str::is_empty),
            "an empty line was sent"
        );
    }
    rows.iter()
        .filter(|r| r.level == stream)
        .flat_map(|r| r.message.split('\n').map(str::to_owned).collect::<Vec<_>>())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_arrives_in_order_then_the_completion() {
    let s = setup().await;
    let journal = Arc::new(Mutex::new(TaskJournal::open(s.dir.path()).unwrap()));
    let mut seq = 0;
    let lines = write_lines(&mut journal.lock().unwrap(), 100_000, &mut seq);
    {
        let mut j = journal.lock().unwrap();
        j.append(LogStream::Stderr, seq + 1, b"warning: one\nwarning: two\n")
            .unwrap();
        j.append(
            LogStream::System,
            seq + 2,
            b"command finished with exit code 3\n",
        )
        .unwrap();
        j.sync().unwrap();
    }
    record_exit(s.dir.path(), exit(CompletionStatus::Failed, 3));
    let mut reporter = TaskReporter::new(
        s.dir.path(),
        s.client.clone(),
        journal.clone(),
        Duration::from_millis(50),
    )
    .unwrap();
    let outcome = reporter.run(&Notify::new()).await.unwrap();
    assert_eq!(outcome, Delivery::Completed);

    let got = received_lines(&s.tb, &s.task_id, "stdout");
    assert_eq!(got.len(), lines.len());
    assert!(got == lines, "stdout lines lost, reordered or changed");
    assert_eq!(
        received_lines(&s.tb, &s.task_id, "stderr"),
        ["warning: one", "warning: two"]
    );
    assert_eq!(
        received_lines(&s.tb, &s.task_id, "info"),
        ["command finished with exit code 3"]
    );
    // Far fewer requests than lines: entries are coalesced.
    let rows = s.tb.task_logs_all(&s.task_id).len();
    assert!(
        rows < lines.len() / 20,
        "{rows} rows for {} lines",
        lines.len()
    );

    let task = s.tb.task(&s.task_id).unwrap();
    assert_eq!(task.status, shared::api::task::TaskStatus::Failed);
    let completed =
        s.tb.requests()
            .into_iter()
            .find(|r| r.path.ends_with("/completed"))
            .unwrap();
    let output = completed.body["output"].as_str().unwrap();
    assert!(output.chars().count() <= 200_000);
    assert!(output.starts_with("line 0000000 \nline 0000001 x\n"));
    assert!(
        output.ends_with("[stderr] warning: one\n[stderr] warning: two\n"),
        "{}",
        &output[output.len() - 100..]
    );
    assert!(output.contains("characters omitted; full output on the node"));
    assert_eq!(completed.body["exitCode"], 3);
    assert_eq!(completed.body["error"], "exit status 3");
    // Delivered state survives: a new reporter has nothing left to do.
    let mut again = TaskReporter::new(
        s.dir.path(),
        s.client.clone(),
        journal,
        Duration::from_millis(50),
    )
    .unwrap();
    assert_eq!(
        again.run(&Notify::new()).await.unwrap(),
        Delivery::Completed
    );
    assert_eq!(
        s.tb.requests()
            .iter()
            .filter(|r| r.path.ends_with("/completed"))
            .count(),
        1
    );
}

/// `got` equals `want` except that an entry retried after an ambiguous
/// failure may appear twice in a row.
fn same_allowing_one_replayed_entry(got: &[String], want: &[String]) {
    let mut g = 0;
    let mut w = 0;
    let mut replays = 0;
    while g < got.len() && w < want.len() {
        if got[g] == want[w] {
            g += 1;
            w += 1;
        } else if want[..w].contains(&got[g]) {
            // A replayed run starts at a line already seen.
            replays += 1;
            let back = want[..w].iter().rposition(|l| *l == got[g]).unwrap();
            w = back;
        } else {
            panic!("line {g} differs: got {:?}, want {:?}", got[g], want[w]);
        }
    }
    assert_eq!(w, want.len(), "lines were lost");
    assert!(replays <= 1, "{replays} replays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_but_loses_nothing() {
    let s = setup().await;
    let journal = Arc::new(Mutex::new(TaskJournal::open(s.dir.path()).unwrap()));
    let mut seq = 0;
    let lines = write_lines(&mut journal.lock().unwrap(), 30_000, &mut seq);
    record_exit(s.dir.path(), exit(CompletionStatus::Success, 0));
    let client = s.client.clone();
    let dir = s.dir.path().to_owned();
    let j = journal.clone();
    let run = tokio::spawn(async move {
        let mut r = TaskReporter::new(&dir, client, j, Duration::from_millis(20)).unwrap();
        r.run(&Notify::new()).await.unwrap()
    });
    s.tb.wait_for(Duration::from_secs(30), |tb| {
        (tb.task_logs_all(&s.task_id).len() > 50).then_some(())
    })
    .await
    .unwrap();
    s.tb.outage(Duration::from_secs(2));
    assert_eq!(run.await.unwrap(), Delivery::Completed);
    same_allowing_one_replayed_entry(&received_lines(&s.tb, &s.task_id, "stdout"), &lines);
    assert_eq!(
        s.tb.task(&s.task_id).unwrap().status,
        shared::api::task::TaskStatus::Success
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_where_the_control_plane_left_off() {
    let s = setup().await;
    let mut seq = 0;
    let lines = {
        let mut j = TaskJournal::open(s.dir.path()).unwrap();
        write_lines(&mut j, 30_000, &mut seq)
    };
    record_exit(s.dir.path(), exit(CompletionStatus::Success, 0));
    // First incarnation: stopped after some entries were delivered.
    {
        let journal = Arc::new(Mutex::new(TaskJournal::open(s.dir.path()).unwrap()));
        let mut r = TaskReporter::new(
            s.dir.path(),
            s.client.clone(),
            journal,
            Duration::from_millis(20),
        )
        .unwrap();
        let notify = Notify::new();
        let stop = s.tb.wait_for(Duration::from_secs(30), |tb| {
            (tb.task_logs_all(&s.task_id).len() > 100).then_some(())
        });
        tokio::select! {
            _ = r.run(&notify) => panic!("finished before the restart"),
            _ = stop => {}
        }
    }
    let before = s.tb.task_logs_all(&s.task_id).len();
    assert!(before > 100);
    // Second incarnation, from disk only.
    let journal = Arc::new(Mutex::new(TaskJournal::open(s.dir.path()).unwrap()));
    let mut r = TaskReporter::new(
        s.dir.path(),
        s.client.clone(),
        journal,
        Duration::from_millis(20),
    )
    .unwrap();
    assert_eq!(r.run(&Notify::new()).await.unwrap(), Delivery::Completed);
    same_allowing_one_replayed_entry(&received_lines(&s.tb, &s.task_id, "stdout"), &lines);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_arriving_while_the_task_runs_is_streamed() {
    let s = setup().await;
    let journal = Arc::new(Mutex::new(TaskJournal::open(s.dir.path()).unwrap()));
    let wake = Arc::new(Notify::new());
    let run = {
        let (dir, client, j, wake) = (
            s.dir.path().to_owned(),
            s.client.clone(),
            journal.clone(),
            wake.clone(),
        );
        tokio::spawn(async move {
            let mut r = TaskReporter::new(&dir, client, j, Duration::from_millis(30)).unwrap();
            r.run(&wake).await.unwrap()
        })
    };
    for i in 0..5u64 {
        {
            let mut j = journal.lock().unwrap();
            j.append(LogStream::Stdout, i + 1, format!("tick {i}\n").as_bytes())
                .unwrap();
            j.sync().unwrap();
        }
        wake.notify_one();
        // Each tick is visible on the control plane before the next one.
        s.tb.wait_for(Duration::from_secs(5), |tb| {
            received_lines(tb, &s.task_id, "stdout")
                .contains(&format!("tick {i}"))
                .then_some(())
        })
        .await
        .unwrap_or_else(|| panic!("tick {i} was not streamed"));
    }
    record_exit(s.dir.path(), exit(CompletionStatus::Success, 0));
    wake.notify_one();
    assert_eq!(run.await.unwrap(), Delivery::Completed);
    assert_eq!(
        received_lines(&s.tb, &s.task_id, "stdout"),
        (0..5).map(|i| format!("tick {i}")).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_finished_elsewhere_ends_the_stream() {
    let s = setup().await;
    let journal = Arc::new(Mutex::new(TaskJournal::open(s.dir.path()).unwrap()));
    {
        let mut j = journal.lock().unwrap();
        j.append(LogStream::Stdout, 1, b"too late\n").unwrap();
        j.sync().unwrap();
    }
    // The server failed the task meanwhile (e.g. the stale detector).
    let _: serde_json::Value = s
        .client
        .post(
            &format!("/agent/tasks/{}/completed", s.task_id),
            &json!({"status": "failed"}),
        )
        .await
        .unwrap();
    record_exit(s.dir.path(), exit(CompletionStatus::Success, 0));
    let mut r = TaskReporter::new(
        s.dir.path(),
        s.client.clone(),
        journal,
        Duration::from_millis(10),
    )
    .unwrap();
    match r.run(&Notify::new()).await.unwrap() {
        Delivery::Ended(reason) => assert!(reason.starts_with("HTTP 409"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let rec = TaskRecord::load(s.dir.path()).unwrap().unwrap();
    assert!(rec.ended.is_some() && !rec.completed_sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_output_is_reported_and_silent_tasks_send_no_output() {
    let s = setup().await;
    let journal = Arc::new(Mutex::new(TaskJournal::open(s.dir.path()).unwrap()));
    {
        let mut j = journal.lock().unwrap();
        j.append_dropped(LogStream::Stdout, 1, 4096).unwrap();
        j.sync().unwrap();
    }
    record_exit(s.dir.path(), exit(CompletionStatus::Success, 0));
    let mut r = TaskReporter::new(
        s.dir.path(),
        s.client.clone(),
        journal,
        Duration::from_millis(10),
    )
    .unwrap();
    assert_eq!(r.run(&Notify::new()).await.unwrap(), Delivery::Completed);
    let completed =
        s.tb.requests()
            .into_iter()
            .find(|r| r.path.ends_with("/completed"))
            .unwrap();
    assert!(completed.body.get("output").is_none(), "{}", completed.body);
    assert!(
        completed.body["error"]
            .as_str()
            .unwrap()
            .contains("4096 bytes of output were dropped")
    );
    assert!(s.tb.task_logs_all(&s.task_id).is_empty());
}

/// A newly claimed task's directory: the record complete and private, no
/// temporary file left, and `sync_new_task` makes it durable as it is.
#[test]
fn a_new_task_directory_is_written_then_synced() {
    use std::os::unix::fs::PermissionsExt as _;
    let root = tempfile::tempdir().unwrap();
    let dir = root
        .path()
        .join("tasks")
        .join("0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61");
    let record = TaskRecord {
        task_id: "0f0e4b57-3b6e-4d7e-8a39-0a2d3a4f5e61".into(),
        task_type: "shell.exec".into(),
        exit: None,
        completed_sent: false,
        ended: None,
    };
    record.create(&dir).unwrap();
    TaskJournal::open(&dir).unwrap();
    noderax_agent::task_report::sync_new_task(&dir).unwrap();
    assert_eq!(TaskRecord::load(&dir).unwrap(), Some(record));
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["delivered", "output.journal", "task.json"]);
    let mode = std::fs::metadata(dir.join("task.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "task.json is private");
    // A directory that was never set up is an error, not a silent success.
    assert!(noderax_agent::task_report::sync_new_task(&root.path().join("tasks/none")).is_err());
}
