//! Property test against an in-memory model: random appends (single and concurrent), rolls,
//! reads, reopens and power cuts on a simulated disk, with and without preallocated segments;
//! the log always returns exactly what the model holds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{read_all, sim_dir};
use proptest::prelude::*;
use tidings_log::sim::SimFs;
use tidings_log::{Log, LogOptions};

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Vec<u8>>),
    Concurrent(Vec<Vec<u8>>),
    Roll,
    Read { at: usize, max_bytes: usize },
    Reopen,
    PowerCut,
}

fn record() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => Just(Vec::new()),
        6 => prop::collection::vec(any::<u8>(), 1..120),
        1 => prop::collection::vec(any::<u8>(), 400..1500),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => prop::collection::vec(record(), 1..4).prop_map(Op::Append),
        3 => prop::collection::vec(record(), 2..12).prop_map(Op::Concurrent),
        1 => Just(Op::Roll),
        5 => (any::<usize>(), 0usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Reopen),
        1 => Just(Op::PowerCut),
    ]
}

/// What the model says a read returns: the first record, then each next one while it fits.
fn model_read(model: &[Vec<u8>], at: usize, max_bytes: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut left = max_bytes;
    for r in &model[at..] {
        if !out.is_empty() && r.len() > left {
            break;
        }
        left = left.saturating_sub(r.len());
        out.push(r.clone());
    }
    out
}

async fn run(ops: Vec<Op>, segment_bytes: u64, interval: u32, preallocate: u64) {
    let fs = SimFs::new();
    let opts = LogOptions::default()
        .with_vfs(Arc::new(fs.clone()))
        .with_segment_bytes(segment_bytes)
        .with_index_interval_bytes(interval)
        .with_preallocate_bytes(preallocate);
    let mut log = Log::open(sim_dir(), opts.clone()).await.unwrap();
    let mut model: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        match op {
            Op::Append(recs) => {
                let ack = log
                    .append(recs.iter().cloned().map(Bytes::from).collect())
                    .await
                    .unwrap();
                assert_eq!(ack.base_offset, model.len() as u64);
                model.extend(recs);
            }
            Op::Concurrent(recs) => {
                let mut tasks = tokio::task::JoinSet::new();
                for r in recs.clone() {
                    let log = log.clone();
                    tasks.spawn(async move {
                        (log.append_one(Bytes::from(r.clone())).await.unwrap(), r)
                    });
                }
                let start = model.len();
                model.resize(start + recs.len(), Vec::new());
                let mut seen = vec![false; recs.len()];
                while let Some(res) = tasks.join_next().await {
                    let (off, r) = res.unwrap();
                    let i = off as usize - start;
                    assert!(!seen[i], "offset {off} given twice");
                    seen[i] = true;
                    model[start + i] = r;
                }
                assert!(seen.iter().all(|s| *s), "offsets not dense");
            }
            Op::Roll => log.roll().await.unwrap(),
            Op::Read { at, max_bytes } => {
                let at = at % (model.len() + 1);
                let got: Vec<Vec<u8>> = log
                    .read(at as u64, max_bytes)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| r.payload.to_vec())
                    .collect();
                assert_eq!(
                    got,
                    model_read(&model, at, max_bytes),
                    "read({at}, {max_bytes})"
                );
            }
            Op::Reopen => {
                log.close().await.unwrap();
                log = Log::open(sim_dir(), opts.clone()).await.unwrap();
            }
            Op::PowerCut => {
                // Under fsync = always nothing acknowledged may be lost.
                fs.crash();
                fs.kill_process();
                drop(log);
                log = Log::open(sim_dir(), opts.clone()).await.unwrap();
            }
        }
        assert_eq!(log.next_offset(), model.len() as u64);
    }
    let all: Vec<Vec<u8>> = read_all(&log, 0)
        .await
        .into_iter()
        .map(|r| r.payload.to_vec())
        .collect();
    assert_eq!(all, model);
    for s in log.segments().unwrap() {
        log.check_segment(s.base_offset).unwrap();
    }
    log.close().await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn the_log_returns_exactly_what_the_model_holds(
        ops in prop::collection::vec(op(), 1..60),
        segment_bytes in 1024u64..8192,
        interval in 32u32..1024,
        preallocate in prop_oneof![Just(0u64), 256u64..10_000],
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run(ops, segment_bytes, interval, preallocate));
    }
}
