//! Many hosts at once: at most `jobs` at a time, results reported as they
//! come, and a way to stop handing out work after a failure (--fail-fast,
//! rolling batches).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread;

/// The default of --jobs: how many hosts are worked on at once.
pub const DEFAULT_JOBS: usize = 8;

/// Runs `work` on every item, at most `jobs` at once. `report` sees each
/// result as it comes (one at a time) and returns whether to go on: once it
/// says no, items not yet started are not started. Returns the indices of
/// the items that were never started.
pub fn each<T: Sync, R>(
    items: &[T],
    jobs: usize,
    work: impl Fn(&T) -> R + Sync,
    report: impl FnMut(&T, R) -> bool + Send,
) -> Vec<usize> {
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let report = Mutex::new(report);
    let started: Vec<AtomicBool> = items.iter().map(|_| AtomicBool::new(false)).collect();
    thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            scope.spawn(|| loop {
                // Reported before the next item is taken, so that a stop
                // is seen by every worker that has not yet started one.
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(item) = items.get(i) else { break };
                started[i].store(true, Ordering::SeqCst);
                let result = work(item);
                let mut report = report.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if !report(item, result) {
                    stop.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    started.iter().enumerate().filter(|(_, s)| !s.load(Ordering::SeqCst)).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn works_on_up_to_jobs_items_at_once() {
        let items: Vec<u64> = (0..8).collect();
        let started = Instant::now();
        let mut seen = Vec::new();
        let skipped = each(
            &items,
            4,
            |_| thread::sleep(Duration::from_millis(100)),
            |i, ()| {
                seen.push(*i);
                true
            },
        );
        assert!(skipped.is_empty());
        seen.sort();
        assert_eq!(seen, items);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "{took:?}: two rounds of four");
    }

    #[test]
    fn stops_handing_out_work_when_told() {
        let items: Vec<u32> = (0..10).collect();
        let skipped = each(&items, 1, |i| *i, |_, i| i < 2);
        assert_eq!(skipped, (3..10).collect::<Vec<usize>>());
    }
}
