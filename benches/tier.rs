//! Tier benchmark: cold reads of a 100-message page from the object store (first time: ranged
//! GET; second time: the foyer cache) against a hot read from local disk, one GET's latency for
//! reference, upload throughput, and sequential replay throughput from the object store.
//!
//! The object store is a real S3 server: `s3s-fs` started on 127.0.0.1 (found like the tests
//! find it: `TIDINGS_S3S_FS`, `~/.cache/tidings-tools/bin/s3s-fs`, or `PATH`; `scripts/test.sh`
//! installs it), or the endpoint in `TIDINGS_TEST_S3_ENDPOINT` / `TIDINGS_TEST_S3_BUCKET` with
//! `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
//!
//! Full run: `cargo bench --bench tier` (options after `--`: `--records N`, default 400,000
//! records of 200 bytes; `--samples N`, default 30; `--json FILE`).
//! Smoke run (CI): `cargo test --bench tier`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt};
use tidings_log::tier::{Tier, TierOptions};
use tidings_log::{FsyncPolicy, Log, LogOptions};

const RECORD: usize = 200;
const PAGE: usize = 100;

struct Args {
    smoke: bool,
    records: u64,
    samples: usize,
    json: Option<PathBuf>,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().collect();
    let smoke = !argv.iter().any(|a| a == "--bench");
    let value = |name: &str| {
        argv.iter()
            .position(|a| a == name)
            .and_then(|i| argv.get(i + 1).cloned())
    };
    Args {
        smoke,
        records: value("--records")
            .map(|s| s.parse().unwrap())
            .unwrap_or(if smoke { 20_000 } else { 400_000 }),
        samples: value("--samples")
            .map(|s| s.parse().unwrap())
            .unwrap_or(if smoke { 3 } else { 30 }),
        json: value("--json").map(PathBuf::from),
    }
}

/// The S3 server the benchmark talks to: started here, or given by the environment.
struct S3 {
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
    endpoint: String,
    bucket: String,
    key: String,
    secret: String,
}

impl S3 {
    fn start() -> S3 {
        if let Ok(endpoint) = std::env::var("TIDINGS_TEST_S3_ENDPOINT") {
            return S3 {
                child: None,
                _dir: None,
                endpoint,
                bucket: std::env::var("TIDINGS_TEST_S3_BUCKET").unwrap_or("tidings".into()),
                key: std::env::var("AWS_ACCESS_KEY_ID").unwrap(),
                secret: std::env::var("AWS_SECRET_ACCESS_KEY").unwrap(),
            };
        }
        let bin = std::env::var_os("TIDINGS_S3S_FS")
            .map(PathBuf::from)
            .or_else(|| {
                let p = PathBuf::from(std::env::var("HOME").ok()?)
                    .join(".cache/tidings-tools/bin/s3s-fs");
                p.exists().then_some(p)
            })
            .unwrap_or_else(|| PathBuf::from("s3s-fs"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("tidings")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (key, secret) = ("tidings-bench-key", "tidings-bench-secret");
        let child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", key, "--secret-key", secret])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); run scripts/test.sh once (it installs s3s-fs) or set TIDINGS_S3S_FS",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        S3 {
            child: Some(child),
            _dir: Some(dir),
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "tidings".into(),
            key: key.into(),
            secret: secret.into(),
        }
    }

    fn store(&self) -> Arc<dyn ObjectStore> {
        Arc::new(
            AmazonS3Builder::new()
                .with_client_options(ClientOptions::new().with_allow_http(true))
                .with_endpoint(&self.endpoint)
                .with_virtual_hosted_style_request(false)
                .with_region("us-east-1")
                .with_bucket_name(&self.bucket)
                .with_access_key_id(&self.key)
                .with_secret_access_key(&self.secret)
                .build()
                .unwrap(),
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct Setup {
    segment_bytes: u64,
    block_bytes: usize,
}

fn setup(smoke: bool) -> Setup {
    if smoke {
        Setup {
            segment_bytes: 256 << 10,
            block_bytes: 64 << 10,
        }
    } else {
        Setup {
            segment_bytes: 16 << 20,
            block_bytes: 1 << 20,
        }
    }
}

async fn open_tier(store: Arc<dyn ObjectStore>, prefix: &str, cache: &Path, s: &Setup) -> Tier {
    Tier::open(
        TierOptions::new(
            store,
            prefix,
            format!("s3://bench/{prefix}"),
            "bench",
            cache,
        )
        .with_local_retention_bytes(0)
        .with_block_bytes(s.block_bytes)
        .with_cache_bytes(256 << 20, 1 << 30)
        .with_upload_interval(Duration::from_secs(3600)),
    )
    .await
    .unwrap()
}

fn record(i: u64) -> Bytes {
    let mut v = format!("{{\"seq\":{i},\"text\":\"").into_bytes();
    v.resize(RECORD - 2, b'x');
    v.extend_from_slice(b"\"}");
    Bytes::from(v)
}

async fn fill(log: &Log, records: u64) {
    let mut i = 0;
    while i < records {
        let end = (i + 1000).min(records);
        log.append((i..end).map(record).collect()).await.unwrap();
        i = end;
    }
    log.sync().await.unwrap();
}

/// Reads one page of `PAGE` records from `from`; returns how long it took.
async fn page(log: &Log, from: u64) -> Duration {
    let started = Instant::now();
    let mut got = 0;
    let mut at = from;
    while got < PAGE {
        let recs = log.read(at, PAGE * (RECORD + 16)).await.unwrap();
        assert!(!recs.is_empty());
        for r in recs.iter().take(PAGE - got) {
            assert_eq!(r.offset, at);
            assert_eq!(r.payload, record(at), "byte-identical at {at}");
            at += 1;
            got += 1;
        }
    }
    started.elapsed()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn p90(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 9 / 10).min(v.len() - 1)]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(args));
}

async fn run(args: Args) {
    let s3 = S3::start();
    let store = s3.store();
    let s = setup(args.smoke);
    let work = tempfile::tempdir().unwrap();
    let prefix = format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );

    // The same records in a hot (local) log and in a tiered one.
    let opts = LogOptions::default()
        .with_fsync(FsyncPolicy::Never)
        .with_segment_bytes(s.segment_bytes);
    let hot = Log::open(work.path().join("hot"), opts.clone())
        .await
        .unwrap();
    fill(&hot, args.records).await;
    let tier = open_tier(store.clone(), &prefix, &work.path().join("cache1"), &s).await;
    let cold = Log::open(work.path().join("cold"), opts.clone().with_tier(tier))
        .await
        .unwrap();
    fill(&cold, args.records).await;
    cold.roll().await.unwrap();

    // Upload: every sealed segment, each read back and CRC-checked before it counts.
    let started = Instant::now();
    let status = cold.upload_now().await.unwrap();
    let upload_secs = started.elapsed().as_secs_f64();
    let uploaded = status.remote_bytes;
    assert_eq!(status.remote_end, args.records);
    assert!(
        cold.segments()
            .unwrap()
            .iter()
            .all(|x| x.remote || !x.sealed)
    );

    // One ranged GET of a block, straight through object_store, for reference.
    let manifest = cold.tier().unwrap().manifest();
    let remote = &manifest.segments;
    let mut gets = Vec::new();
    for i in 0..args.samples {
        let seg = &remote[i % remote.len()];
        let key = ObjectPath::from(format!("{prefix}/{}", seg.key("log")));
        let len = seg.bytes.min(s.block_bytes as u64);
        let started = Instant::now();
        let got = store.get_range(&key, 0..len).await.unwrap();
        gets.push(started.elapsed());
        assert_eq!(got.len() as u64, len);
    }

    // Pages at offsets far apart (every sample in a block nobody read or prefetched yet).
    let records_per_block = (s.block_bytes / (RECORD + 16)) as u64;
    let stride = (records_per_block * 8).max(PAGE as u64 * 2);
    let starts: Vec<u64> = (0..args.samples as u64)
        .map(|i| (i * stride + records_per_block / 3) % (args.records - PAGE as u64))
        .collect();
    for &at in &starts {
        page(&hot, at).await; // warm the page cache: "hot" means local and cached
    }
    let (mut first, mut second, mut hot_reads) = (Vec::new(), Vec::new(), Vec::new());
    for &at in &starts {
        first.push(page(&cold, at).await);
        second.push(page(&cold, at).await);
        hot_reads.push(page(&hot, at).await);
    }
    let gets_done = cold.tier().unwrap().status().gets;
    cold.close().await.unwrap();

    // Replay from the object store: restore into an empty directory with an empty cache and
    // read every record in order (the reader prefetches the next blocks).
    let tier = open_tier(store.clone(), &prefix, &work.path().join("cache2"), &s).await;
    let replay = Log::open(work.path().join("restored"), opts.with_tier(tier))
        .await
        .unwrap();
    assert_eq!(replay.start_offset(), 0);
    let started = Instant::now();
    let mut at = 0;
    let mut bytes = 0u64;
    while at < args.records {
        let recs = replay.read(at, 1 << 20).await.unwrap();
        for r in recs {
            assert_eq!(r.offset, at);
            bytes += r.payload.len() as u64;
            at += 1;
        }
    }
    let replay_secs = started.elapsed().as_secs_f64();
    replay.close().await.unwrap();

    let get = median(gets.clone());
    let (f, sc, h) = (
        median(first.clone()),
        median(second.clone()),
        median(hot_reads.clone()),
    );
    let results = serde_json::json!({
        "records": args.records,
        "record_bytes": RECORD,
        "block_bytes": s.block_bytes,
        "segment_bytes": s.segment_bytes,
        "samples": args.samples,
        "get_block_p50_us": us(get),
        "get_block_p90_us": us(p90(gets)),
        "cold_first_p50_us": us(f),
        "cold_first_p90_us": us(p90(first)),
        "cold_second_p50_us": us(sc),
        "cold_second_p90_us": us(p90(second)),
        "hot_p50_us": us(h),
        "hot_p90_us": us(p90(hot_reads)),
        "first_over_get": us(f) / us(get),
        "second_over_hot": us(sc) / us(h),
        "ranged_gets": gets_done,
        "upload_mb_s": uploaded as f64 / 1e6 / upload_secs,
        "uploaded_bytes": uploaded,
        "replay_payload_mb_s": bytes as f64 / 1e6 / replay_secs,
        "replay_records_s": args.records as f64 / replay_secs,
    });
    println!("{}", serde_json::to_string_pretty(&results).unwrap());
    println!(
        "| cold page, first (S3) | {:.0} µs p50 ({:.2}× one {} KiB GET: {:.0} µs) |",
        us(f),
        us(f) / us(get),
        s.block_bytes >> 10,
        us(get)
    );
    println!(
        "| cold page, second (foyer) | {:.0} µs p50 ({:.2}× hot: {:.0} µs) |",
        us(sc),
        us(sc) / us(h),
        us(h)
    );
    println!(
        "| upload | {:.1} MB/s ({} MB) | replay from S3 | {:.1} MB/s payload |",
        uploaded as f64 / 1e6 / upload_secs,
        uploaded / 1_000_000,
        bytes as f64 / 1e6 / replay_secs
    );
    if let Some(path) = args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&results).unwrap()).unwrap();
    }
    drop(s3);
    if args.smoke {
        println!("smoke run: 1 passed, 0 failed");
    }
}
