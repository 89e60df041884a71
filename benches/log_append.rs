//! The log benchmark: append throughput and latency at 1, 16 and 256 concurrent appenders with
//! `fsync = always` and preallocated segments (as the server runs it), against two raw
//! baselines of the same batch sizes on the same disk — a plain `write + fdatasync` loop that
//! appends to a new file, and the same loop overwriting a file of zeros in place (what a
//! preallocated segment does); sequential read throughput; and the time to open a large log.
//!
//! Full run (numbers for the README):   `cargo bench --bench log_append`
//! Options after `--`: `--secs S` (per scenario, default 5), `--open-gb N` (size of the log
//! for the open-time test, default 10; 0 skips it), `--dir PATH` (default: a temp dir),
//! `--json PATH` (also write the results as JSON), `--appenders 1,256` (only these rows).
//! Smoke run (what CI does, seconds): `cargo test --bench log_append`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use tidings_log::sim::CountingFs;
use tidings_log::{FsyncPolicy, Log, LogOptions, StdFs};

const RECORD: usize = 200;

struct Args {
    smoke: bool,
    secs: f64,
    open_gb: u64,
    dir: Option<PathBuf>,
    json: Option<PathBuf>,
    appenders: Option<Vec<usize>>,
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
        secs: value("--secs")
            .map(|s| s.parse().unwrap())
            .unwrap_or(if smoke { 0.3 } else { 5.0 }),
        open_gb: value("--open-gb")
            .map(|s| s.parse().unwrap())
            .unwrap_or(if smoke { 0 } else { 10 }),
        dir: value("--dir").map(PathBuf::from),
        json: value("--json").map(PathBuf::from),
        appenders: value("--appenders")
            .map(|s| s.split(',').map(|n| n.trim().parse().unwrap()).collect()),
    }
}

struct AppendResult {
    concurrency: usize,
    records: u64,
    secs: f64,
    hist: Histogram<u64>,
    disk_bytes: u64,
    batches: u64,
    fsyncs: u64,
    fsync_nanos: u64,
}

impl AppendResult {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }
    fn payload_mb_per_sec(&self) -> f64 {
        (self.records * RECORD as u64) as f64 / self.secs / 1e6
    }
    fn disk_mb_per_sec(&self) -> f64 {
        self.disk_bytes as f64 / self.secs / 1e6
    }
    fn avg_fsync_us(&self) -> f64 {
        self.fsync_nanos as f64 / self.fsyncs.max(1) as f64 / 1000.0
    }
    fn records_per_fsync(&self) -> f64 {
        self.records as f64 / self.fsyncs.max(1) as f64
    }
    fn avg_batch_bytes(&self) -> usize {
        (self.disk_bytes / self.batches.max(1)) as usize
    }
}

async fn append_run(dir: &Path, concurrency: usize, secs: f64, smoke: bool) -> AppendResult {
    let _ = std::fs::remove_dir_all(dir);
    let prealloc: u64 = if smoke { 8 << 20 } else { 128 << 20 };
    let opts = LogOptions::default()
        .with_fsync(FsyncPolicy::Always)
        .with_preallocate_bytes(prealloc);
    let log = Log::open(dir, opts).await.unwrap();
    // A new log's first segment is not preallocated; it hands over to the first spare as soon
    // as that is written (at the next append after it).
    let spare = dir.join("next-segment.zeros");
    let ready_by = Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&spare).map_or(0, |m| m.len()) < prealloc && Instant::now() < ready_by {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let payload = Bytes::from(vec![b'x'; RECORD]);
    // Warm up: the first fsyncs of a new file cost more (allocation of its first extents).
    for _ in 0..50 {
        log.append_one(payload.clone()).await.unwrap();
    }
    let before = log.metrics();
    let start = Instant::now();
    let stop = start + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (log, payload) = (log.clone(), payload.clone());
        tasks.spawn(async move {
            // Latencies go into a plain vector (sequential writes) and into a histogram only
            // after the clock stops: 256 histograms of this range are ~100 MB, and recording
            // into them missed the cache on every append (8% of the run's CPU in a profile).
            // Nanoseconds in a u32: an append slower than 4.29 s is counted as 4.29 s.
            let mut lat: Vec<u32> = Vec::with_capacity(1 << 16);
            let mut t = Instant::now();
            while t < stop {
                log.append_one(payload.clone()).await.unwrap();
                let now = Instant::now();
                lat.push(u32::try_from((now - t).as_nanos()).unwrap_or(u32::MAX));
                t = now;
            }
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
            for &ns in &lat {
                hist.record(u64::from(ns.max(1))).unwrap();
            }
            (hist, lat.len() as u64)
        });
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut records = 0;
    while let Some(r) = tasks.join_next().await {
        let (h, n) = r.unwrap();
        hist.add(h).unwrap();
        records += n;
    }
    let secs = start.elapsed().as_secs_f64();
    let after = log.metrics();
    // What the appenders counted as acknowledged is what the log wrote: nothing counted twice
    // or lost (the read row below reads every record back).
    assert_eq!(
        after.records - before.records,
        records,
        "acknowledged appends and the log's records differ"
    );
    log.close().await.unwrap();
    AppendResult {
        concurrency,
        records,
        secs,
        hist,
        disk_bytes: after.bytes - before.bytes,
        batches: after.batches - before.batches,
        fsyncs: after.fsyncs - before.fsyncs,
        fsync_nanos: after.fsync_nanos - before.fsync_nanos,
    }
}

/// A plain loop of `write` + `fdatasync` of `batch` bytes, appending to a new file; returns
/// (bytes, seconds).
fn baseline(dir: &Path, batch: usize, secs: f64) -> (u64, f64) {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("baseline.dat");
    let _ = std::fs::remove_file(&path);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let buf = vec![7u8; batch.max(1)];
    for _ in 0..50 {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&buf).unwrap();
        f.sync_data().unwrap();
        bytes += buf.len() as u64;
    }
    let took = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    (bytes, took)
}

/// The same loop overwriting a file of zeros in place (written and synced before the clock
/// starts; wraps around at its end); returns (bytes, seconds).
fn baseline_in_place(dir: &Path, batch: usize, secs: f64, smoke: bool) -> (u64, f64) {
    use std::os::unix::fs::FileExt;
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("baseline-in-place.dat");
    let _ = std::fs::remove_file(&path);
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let size: u64 = if smoke { 8 << 20 } else { 256 << 20 };
    let zeros = vec![0u8; 1 << 20];
    for i in 0..size >> 20 {
        f.write_all_at(&zeros, i << 20).unwrap();
    }
    f.sync_all().unwrap();
    let buf = vec![7u8; batch.max(1)];
    let mut pos = 0u64;
    let mut put = |f: &std::fs::File| {
        if pos + buf.len() as u64 > size {
            pos = 0;
        }
        f.write_all_at(&buf, pos).unwrap();
        f.sync_data().unwrap();
        pos += buf.len() as u64;
    };
    for _ in 0..50 {
        put(&f);
    }
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        put(&f);
        bytes += buf.len() as u64;
    }
    let took = start.elapsed().as_secs_f64();
    drop(f);
    let _ = std::fs::remove_file(&path);
    (bytes, took)
}

/// Alternates `rounds` short runs of tidings and of the baseline (same batch size as the
/// tidings run just before it), so that drift in the disk's speed hits both alike.
/// Returns tidings' result and the two baselines' MB/s (appending, in place).
async fn interleaved(
    root: &Path,
    c: usize,
    secs: f64,
    rounds: usize,
    smoke: bool,
) -> (AppendResult, f64, f64) {
    let mut total: Option<AppendResult> = None;
    let (mut base_bytes, mut base_secs) = (0u64, 0f64);
    let (mut place_bytes, mut place_secs) = (0u64, 0f64);
    let round = secs / rounds as f64;
    for _ in 0..rounds {
        let r = append_run(&root.join(format!("append-{c}")), c, round, smoke).await;
        let (b, t) = baseline(&root.join("baseline"), r.avg_batch_bytes(), round);
        base_bytes += b;
        base_secs += t;
        let (b, t) = baseline_in_place(&root.join("baseline"), r.avg_batch_bytes(), round, smoke);
        place_bytes += b;
        place_secs += t;
        total = Some(match total {
            None => r,
            Some(mut acc) => {
                acc.records += r.records;
                acc.secs += r.secs;
                acc.hist.add(r.hist).unwrap();
                acc.disk_bytes += r.disk_bytes;
                acc.batches += r.batches;
                acc.fsyncs += r.fsyncs;
                acc.fsync_nanos += r.fsync_nanos;
                acc
            }
        });
    }
    (
        total.unwrap(),
        base_bytes as f64 / base_secs / 1e6,
        place_bytes as f64 / place_secs / 1e6,
    )
}

async fn read_run(dir: &Path) -> (u64, f64, f64) {
    let log = Log::open(dir, LogOptions::default()).await.unwrap();
    let end = log.next_offset();
    let start = Instant::now();
    let (mut at, mut bytes) = (0u64, 0u64);
    while at < end {
        let recs = log.read(at, 1 << 20).await.unwrap();
        // Every record, in order, at its size: a fast wrong read does not count.
        for (i, r) in recs.iter().enumerate() {
            assert_eq!(r.offset, at + i as u64, "a gap or a repeat in the read");
            assert_eq!(r.payload.len(), RECORD, "a record of the wrong size");
        }
        at = recs.last().unwrap().offset + 1;
        bytes += recs.iter().map(|r| r.payload.len() as u64).sum::<u64>();
    }
    let secs = start.elapsed().as_secs_f64();
    log.close().await.unwrap();
    (end, end as f64 / secs, bytes as f64 / secs / 1e6)
}

/// Builds (or reuses) a log of about `gb` GB and measures how long opening it takes.
async fn open_run(dir: &Path, gb: u64) -> (u64, usize, f64, u64) {
    let target = gb << 30;
    let opts = LogOptions::default().with_fsync(FsyncPolicy::Never);
    let log = Log::open(dir, opts.clone()).await.unwrap();
    let mut size: u64 = log.segments().unwrap().iter().map(|s| s.bytes).sum();
    if size < target {
        eprintln!(
            "building a {gb} GB log in {} (reused by later runs)",
            dir.display()
        );
        let batch: Vec<Bytes> = (0..256).map(|_| Bytes::from(vec![b'y'; 4096])).collect();
        while size < target {
            log.append(batch.clone()).await.unwrap();
            size += 256 * 4100 + 40;
        }
    }
    log.close().await.unwrap();
    let mut times = Vec::new();
    let mut read = 0;
    let mut segments = 0;
    for _ in 0..5 {
        let counting = CountingFs::new(Arc::new(StdFs));
        let t = Instant::now();
        let log = Log::open(dir, opts.clone().with_vfs(Arc::new(counting.clone())))
            .await
            .unwrap();
        times.push(t.elapsed().as_secs_f64());
        read = counting.bytes_read();
        let segs = log.segments().unwrap();
        segments = segs.len();
        size = segs.iter().map(|s| s.bytes).sum();
        log.close().await.unwrap();
    }
    times.sort_by(f64::total_cmp);
    (size, segments, times[times.len() / 2], read)
}

fn main() {
    let args = args();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let root = args.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let concurrencies: &[usize] = match &args.appenders {
        Some(list) => list,
        None if args.smoke => &[1, 16],
        None => &[1, 16, 256],
    };
    let mut rows = Vec::new();
    let mut json = Vec::new();
    let mut last_dir = None;
    for &c in concurrencies {
        let dir = root.join(format!("append-{c}"));
        let rounds = if args.smoke { 1 } else { 3 };
        let (r, base, in_place) = rt.block_on(interleaved(&root, c, args.secs, rounds, args.smoke));
        let ratio = r.disk_mb_per_sec() / base;
        let ratio_in_place = r.disk_mb_per_sec() / in_place;
        let p = |q: f64| r.hist.value_at_quantile(q) as f64 / 1000.0;
        rows.push(format!(
            "| {c} | {:.0} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.0} | {} | {:.1} | {:.2} | {:.1} | {:.2} |",
            r.records_per_sec(),
            r.payload_mb_per_sec(),
            r.disk_mb_per_sec(),
            p(0.5),
            p(0.99),
            r.records_per_fsync(),
            r.avg_fsync_us(),
            r.avg_batch_bytes(),
            base,
            ratio,
            in_place,
            ratio_in_place
        ));
        json.push(format!(
            "{{\"scenario\":\"append\",\"concurrency\":{c},\"records_per_sec\":{:.0},\"payload_mb_per_sec\":{:.2},\"disk_mb_per_sec\":{:.2},\"p50_us\":{:.1},\"p99_us\":{:.1},\"avg_batch_bytes\":{},\"records_per_fsync\":{:.1},\"avg_fsync_us\":{:.1},\"baseline_mb_per_sec\":{:.2},\"ratio_to_baseline\":{:.3},\"in_place_baseline_mb_per_sec\":{:.2},\"ratio_to_in_place_baseline\":{:.3}}}",
            r.records_per_sec(),
            r.payload_mb_per_sec(),
            r.disk_mb_per_sec(),
            p(0.5),
            p(0.99),
            r.avg_batch_bytes(),
            r.records_per_fsync(),
            r.avg_fsync_us(),
            base,
            ratio,
            in_place,
            ratio_in_place
        ));
        assert_eq!(r.concurrency, c);
        last_dir = Some(dir);
    }
    println!(
        "\nlog append, {RECORD}-byte records, fsync = always, {:.1} s per row, in rounds alternating with the baseline",
        args.secs
    );
    println!(
        "| appenders | records/s | payload MB/s | disk MB/s | p50 µs | p99 µs | records/fsync | fsync µs | avg batch B | baseline MB/s | ratio | in-place baseline MB/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for row in &rows {
        println!("{row}");
    }

    if let Some(dir) = last_dir {
        let (n, rps, mbps) = rt.block_on(read_run(&dir));
        println!(
            "\nsequential read of {n} records (page cache warm): {rps:.0} records/s, {mbps:.1} MB/s payload"
        );
        json.push(format!(
            "{{\"scenario\":\"read\",\"records\":{n},\"records_per_sec\":{rps:.0},\"payload_mb_per_sec\":{mbps:.2}}}"
        ));
    }
    if args.open_gb > 0 {
        let dir = args
            .dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("target/bench-open-log"));
        let (size, segs, secs, read) = rt.block_on(open_run(&dir, args.open_gb));
        println!(
            "\nopen of a {:.1} GB log ({segs} segments): median {:.1} ms, {read} bytes read",
            size as f64 / 1e9,
            secs * 1e3
        );
        json.push(format!(
            "{{\"scenario\":\"open\",\"bytes\":{size},\"segments\":{segs},\"median_ms\":{:.2},\"bytes_read\":{read}}}",
            secs * 1e3
        ));
    }
    if let Some(path) = args.json {
        std::fs::write(&path, format!("[{}]\n", json.join(",\n"))).unwrap();
    }
    if args.smoke {
        println!("smoke run: 1 passed, 0 failed");
    }
}
