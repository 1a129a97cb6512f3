//! Competing consumers in separate processes (`runtime-worker`: the real `ConsumerRuntime` and
//! `OutboxRelay`), killed with SIGKILL in the middle of batches and restarted, or stopped with
//! SIGTERM: every record's effect is applied exactly once, the inbox holds every event once, the
//! outbox drains, and the events the handler emits reach Kafka (duplicates on the wire are
//! allowed by design, a relay killed between send and delete re-publishes; they carry the same
//! event id, which the consumers' inbox drops).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use paystream_domain::PaymentId;
use paystream_e2e::runtime_support::{Case, Env, Rec, producer, requested, send_all, wait_until};
use rand::Rng;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use uuid::Uuid;

const WORKER: &str = env!("CARGO_BIN_EXE_runtime-worker");
/// Handler time per record: batches take long enough to be killed in their middle.
const HANDLER_DELAY_MS: &str = "4";
/// A SIGKILLed member keeps its partitions until its session times out (10 s in
/// `kafka::consumer_config`), so each kill costs that long.
const GROUP_RECOVERY: Duration = Duration::from_secs(45);

/// What a worker told on stdout so far.
#[derive(Default)]
struct Progress {
    ready: AtomicBool,
    bye: AtomicBool,
    /// Records the handler applied (inside a not yet committed transaction at the time).
    handled: AtomicU64,
    /// Applied records of committed batches.
    committed: AtomicU64,
}

impl Progress {
    /// Records handled in a batch whose transaction has not committed (yet).
    fn in_flight(&self) -> u64 {
        self.handled
            .load(Ordering::SeqCst)
            .saturating_sub(self.committed.load(Ordering::SeqCst))
    }
}

struct Worker {
    name: String,
    child: Child,
    progress: Arc<Progress>,
    log: PathBuf,
}

impl Worker {
    /// Workers named `a…` declare their effects transactional (batches without savepoints),
    /// `b…` do not (a savepoint per record): both paths compete on the same partitions.
    fn spawn(case: &Case, name: &str) -> anyhow::Result<Self> {
        let log = std::env::temp_dir().join(format!("{}-{name}.log", case.topic));
        let stderr = std::fs::File::create(&log).context("worker log file")?;
        let mut child = Command::new(WORKER)
            .env("RTW_TOPIC", &case.topic)
            .env("RTW_OUT_TOPIC", &case.out_topic)
            .env("RTW_GROUP", &case.group)
            .env("RTW_SCHEMA", &case.schema)
            .env("RTW_DELAY_MS", HANDLER_DELAY_MS)
            .env("RTW_MAX_BATCH", "100")
            .env("RTW_TRANSACTIONAL", name.starts_with('a').to_string())
            .env("KAFKA_BOOTSTRAP_SERVERS", case.env.bootstrap())
            .env("DATABASE_URL", &case.env.common.database_url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .context("starting runtime-worker")?;
        let stdout = child.stdout.take().context("worker stdout")?;
        let progress = Arc::new(Progress::default());
        let p = progress.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match line.split_once(' ').unwrap_or((line.as_str(), "")) {
                    ("h", _) => {
                        p.handled.fetch_add(1, Ordering::SeqCst);
                    }
                    ("c", n) => {
                        p.committed
                            .fetch_add(n.parse().unwrap_or(0), Ordering::SeqCst);
                    }
                    ("ready", _) => p.ready.store(true, Ordering::SeqCst),
                    ("bye", _) => p.bye.store(true, Ordering::SeqCst),
                    _ => {}
                }
            }
        });
        Ok(Self {
            name: name.to_owned(),
            child,
            progress,
            log,
        })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("worker already exited")
    }

    async fn sigkill(&mut self) -> anyhow::Result<ExitStatus> {
        self.child.start_kill().context("SIGKILL")?;
        Ok(self.child.wait().await?)
    }

    /// SIGTERM, then the exit status and how long the worker took to exit.
    async fn sigterm(&mut self, limit: Duration) -> anyhow::Result<(ExitStatus, Duration)> {
        let sent = Instant::now();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.pid()?.to_string()])
            .status()
            .context("running kill -TERM")?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let exited = tokio::time::timeout(limit, self.child.wait())
            .await
            .with_context(|| format!("{} still running {limit:?} after SIGTERM", self.name))??;
        Ok((exited, sent.elapsed()))
    }

    /// Waits until this worker is in the middle of a batch: it applied records whose
    /// transaction has not committed.
    async fn wait_mid_batch(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while self.progress.in_flight() == 0 {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} did not start a batch within {timeout:?} (log: {})",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// The handler applied records of a batch whose transaction has not committed.
    MidBatch,
    /// A batch just committed: its outbox rows are being published by the relay.
    AfterCommit,
}

/// Waits for a worker at `moment` (trying them from `first` on); returns its index.
async fn pick_victim(workers: &[Worker], moment: Moment, first: usize) -> anyhow::Result<usize> {
    let deadline = Instant::now() + GROUP_RECOVERY;
    let committed: Vec<u64> = workers
        .iter()
        .map(|w| w.progress.committed.load(Ordering::SeqCst))
        .collect();
    loop {
        for k in 0..workers.len() {
            let i = (first + k) % workers.len();
            let p = &workers[i].progress;
            let hit = match moment {
                Moment::MidBatch => p.in_flight() > 0,
                Moment::AfterCommit => p.committed.load(Ordering::SeqCst) > committed[i],
            };
            if hit {
                return Ok(i);
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no worker processing for {GROUP_RECOVERY:?} (logs: {:?})",
            workers.iter().map(|w| &w.log).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The workers' stderr logs are kept when a test fails (their paths are in its messages).
fn remove_logs(logs: &[PathBuf]) {
    for log in logs {
        let _ = std::fs::remove_file(log);
    }
}

fn produce_records(case: &Case, n: usize) -> anyhow::Result<Vec<Rec>> {
    (0..n)
        .map(|i| requested(&case.topic, PaymentId::new(), 100 + i as i64))
        .collect()
}

async fn wait_all_applied(case: &Case, n: i64, timeout: Duration) -> anyhow::Result<()> {
    wait_until(
        "every record applied, input consumed, outbox drained",
        timeout,
        Duration::from_millis(200),
        || async {
            let (_, distinct) = case.effect_counts().await?;
            Ok(distinct >= n
                && case.group_caught_up(&case.group).await?
                && case.outbox_count().await? == 0)
        },
    )
    .await
}

/// The exactly-once assertions; returns the number of duplicate records on the output topic.
async fn assert_exactly_once(case: &Case, produced: &[Rec]) -> anyhow::Result<usize> {
    let n = produced.len() as i64;
    let (rows, distinct) = case.effect_counts().await?;
    assert_eq!(
        (rows, distinct),
        (n, n),
        "effects: count(*) and count(DISTINCT event_id) must both be the number produced"
    );
    let effects = case.effects().await?;
    for r in produced {
        let id = r.event_id().context("event id")?;
        assert_eq!(effects.get(&id), Some(&1), "effect of {id}");
    }
    assert_eq!(case.inbox_count().await?, n, "one inbox row per event");
    assert_eq!(case.inbox_not_done().await?, 0);
    assert_eq!(case.outbox_count().await?, 0, "outbox drained");

    let out = case.read_topic(&case.out_topic).await?;
    let ids: HashSet<Uuid> = out.iter().filter_map(Rec::event_id).collect();
    let sources: HashSet<Uuid> = out.iter().filter_map(Rec::source_event_id).collect();
    let produced_ids: HashSet<Uuid> = produced.iter().filter_map(Rec::event_id).collect();
    assert_eq!(
        ids.len(),
        produced.len(),
        "emitted events, de-duplicated by event_id"
    );
    assert_eq!(
        sources, produced_ids,
        "one emitted event for every input event"
    );
    assert!(
        case.dlt_records().await?.is_empty(),
        "nothing dead-lettered"
    );
    Ok(out.len() - ids.len())
}

/// 5. Two competing workers; one of them is SIGKILLed in the middle of a batch, again and
///    again, and restarted. Nothing is lost, nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_consumers_killed_mid_batch_apply_every_record_exactly_once() -> anyhow::Result<()>
{
    const RECORDS: usize = 3_000;
    const KILLS: usize = 9;
    let started = Instant::now();
    let env = Env::connect(4).await?;
    let case = Case::new(&env, "sigkill", 6).await?;
    let produced = send_all(
        &producer(env.bootstrap())?,
        &produce_records(&case, RECORDS)?,
    )
    .await?;
    let partitions: HashSet<i32> = produced.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 6, "records over all partitions");

    let mut workers = vec![Worker::spawn(&case, "a0")?, Worker::spawn(&case, "b0")?];
    let mut logs: Vec<PathBuf> = workers.iter().map(|w| w.log.clone()).collect();
    let mut kills = Vec::new();
    let mut rng = rand::rng();
    'kill: for round in 1..=KILLS {
        let (distinct, _) = case.effect_counts().await?;
        if distinct >= RECORDS as i64 {
            eprintln!("sigkill: all records applied after {} kills", round - 1);
            break;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..250))).await;
        // Mostly in the middle of a batch (at a random point of it); every third kill right
        // after a commit, while the relay publishes what the batch wrote.
        let moment = if round % 3 == 0 {
            Moment::AfterCommit
        } else {
            Moment::MidBatch
        };
        let victim = loop {
            let i = pick_victim(&workers, moment, rng.random_range(0..workers.len())).await?;
            if moment == Moment::AfterCommit {
                // Into the relay's send-then-delete window (a few milliseconds).
                tokio::time::sleep(Duration::from_millis(rng.random_range(1..8))).await;
                break i;
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..150))).await;
            if workers[i].progress.in_flight() > 0 {
                break i;
            }
            if case.effect_counts().await?.1 >= RECORDS as i64 {
                break 'kill;
            }
        };
        let in_flight = workers[victim].progress.in_flight();
        let status = workers[victim].sigkill().await?;
        assert!(!status.success(), "killed, not exited: {status:?}");
        kills.push(format!(
            "{} {moment:?} in_flight={in_flight} at {:.1?}",
            workers[victim].name,
            started.elapsed()
        ));
        let name = format!("{}{round}", &workers[victim].name[..1]);
        workers[victim] = Worker::spawn(&case, &name)?;
        logs.push(workers[victim].log.clone());
    }

    wait_all_applied(&case, RECORDS as i64, Duration::from_secs(90)).await?;
    for w in &mut workers {
        let (status, took) = w.sigterm(Duration::from_secs(30)).await?;
        assert!(
            status.success(),
            "{} exited with {status:?} (log {})",
            w.name,
            w.log.display()
        );
        assert!(
            took < Duration::from_secs(20),
            "{} took {took:?} to stop",
            w.name
        );
    }

    let duplicates = assert_exactly_once(&case, &produced).await?;
    eprintln!(
        "sigkill: {RECORDS} records, {} SIGKILLs: {kills:#?}\nsigkill: {} emitted events on the \
         wire for {RECORDS} distinct ({duplicates} duplicates from relay re-publishing, dropped by \
         event id downstream); {:?}",
        kills.len(),
        RECORDS + duplicates,
        started.elapsed()
    );
    assert!(kills.len() >= KILLS / 2, "too few kills landed: {kills:?}");
    case.cleanup(&[]).await;
    remove_logs(&logs);
    Ok(())
}

/// 5b. SIGTERM in the middle of a batch: the worker finishes and commits the batch it has in
///     hand, publishes its outbox, leaves the group and exits 0 within seconds; the other worker
///     takes over; nothing is lost, nothing is duplicated (not even on the wire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_worker_gracefully_without_loss() -> anyhow::Result<()> {
    const RECORDS: usize = 1_500;
    let started = Instant::now();
    let env = Env::connect(4).await?;
    let case = Case::new(&env, "sigterm", 6).await?;
    let produced = send_all(
        &producer(env.bootstrap())?,
        &produce_records(&case, RECORDS)?,
    )
    .await?;

    let mut a = Worker::spawn(&case, "a0")?;
    let mut b = Worker::spawn(&case, "b0")?;
    b.wait_mid_batch(GROUP_RECOVERY).await?;
    loop {
        a.wait_mid_batch(GROUP_RECOVERY).await?;
        let pause = rand::rng().random_range(0..150);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if a.progress.in_flight() > 0 {
            break;
        }
    }
    let in_flight = a.progress.in_flight();
    let (status, took) = a.sigterm(Duration::from_secs(30)).await?;
    assert!(
        status.success(),
        "exit status {status:?} (log {})",
        a.log.display()
    );
    // A bound on hanging, not a performance figure: on a loaded two-core machine leaving the
    // group and flushing takes a few seconds.
    assert!(took < Duration::from_secs(20), "took {took:?} to stop");
    assert!(a.progress.bye.load(Ordering::SeqCst), "worker a said bye");
    assert_eq!(
        a.progress.handled.load(Ordering::SeqCst),
        a.progress.committed.load(Ordering::SeqCst),
        "the batch in hand at SIGTERM was finished and committed"
    );
    let a_done = a.progress.committed.load(Ordering::SeqCst);

    wait_all_applied(&case, RECORDS as i64, Duration::from_secs(60)).await?;
    let (status, _) = b.sigterm(Duration::from_secs(15)).await?;
    assert!(
        status.success(),
        "exit status {status:?} (log {})",
        b.log.display()
    );
    let duplicates = assert_exactly_once(&case, &produced).await?;
    assert_eq!(duplicates, 0, "a graceful stop re-publishes nothing");
    eprintln!(
        "sigterm: worker a stopped {took:?} after SIGTERM with {in_flight} records in its batch \
         (applied {a_done} in all), worker b applied {}; {:?}",
        b.progress.committed.load(Ordering::SeqCst),
        started.elapsed()
    );
    case.cleanup(&[]).await;
    remove_logs(&[a.log, b.log]);
    Ok(())
}
