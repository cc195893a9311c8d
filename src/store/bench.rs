//! One store workload for every backend, so the figures compare: `cargo bench`
//! runs it on memory and disk, the browser bench page on IndexedDB.

use web_time::Instant;

use super::{Batch, Direction, KeyRange, Result, Schema, Store};

pub const SCHEMA: Schema = Schema { version: 1, tables: &["bench"] };
const TABLE: &str = "bench";
const VALUE: [u8; 256] = [0x5a; 256];
const BATCH: usize = 100;
const SCAN: usize = 100;

pub struct Figure {
    pub operation: &'static str,
    pub count: usize,
    pub seconds: f64,
}

fn key(i: usize) -> [u8; 8] {
    (i as u64).to_be_bytes()
}

/// Times `n` of each operation on an empty `store` and returns ops per second.
pub async fn run(store: &dyn Store, n: usize) -> Result<Vec<Figure>> {
    let mut figures = Vec::new();
    let mut time = |operation, count, start: Instant| {
        figures.push(Figure { operation, count, seconds: start.elapsed().as_secs_f64() })
    };

    let start = Instant::now();
    for i in 0..n {
        store.put(TABLE, &key(i), &VALUE).await?;
    }
    time("put (one per transaction)", n, start);

    let start = Instant::now();
    for chunk in (n..2 * n).collect::<Vec<_>>().chunks(BATCH) {
        let batch = chunk.iter().fold(Batch::new(), |b, &i| b.put(TABLE, key(i), VALUE));
        store.write(batch).await?;
    }
    time("put (batches of 100)", n, start);

    // A fixed stride through all keys: every key once, in no useful order.
    let start = Instant::now();
    for i in 0..n {
        let found = store.get(TABLE, &key(i * 7919 % (2 * n))).await?;
        debug_assert!(found.is_some());
    }
    time("get", n, start);

    let scans = (n / SCAN).max(1);
    for (operation, direction) in [("scan 100 forward", Direction::Forward), ("scan 100 backward", Direction::Backward)] {
        let start = Instant::now();
        for s in 0..scans {
            let from = key(s * 2 * n / scans).to_vec();
            let range = match direction {
                Direction::Forward => KeyRange::new(std::ops::Bound::Included(from), std::ops::Bound::Unbounded),
                Direction::Backward => KeyRange::new(std::ops::Bound::Unbounded, std::ops::Bound::Included(from)),
            };
            store.scan(TABLE, range, direction, SCAN).await?;
        }
        time(operation, scans, start);
    }
    Ok(figures)
}

/// The figures as rows of a Markdown table: `| backend | operation | ops/s |`.
pub fn rows(backend: &str, figures: &[Figure]) -> String {
    figures
        .iter()
        .map(|f| format!("| {backend} | {} | {} | {:.0} |\n", f.operation, f.count, f.count as f64 / f.seconds))
        .collect()
}

pub const HEADER: &str = "| backend | operation | count | ops/s |\n|---|---|---|---|\n";
