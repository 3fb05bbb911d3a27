//! Many hosts at once: at most `jobs` at a time, results reported as they
//! come, and a way to stop handing out work after a failure (--fail-fast,
//! rolling batches); and the records paired with their targets, checked
//! before anything is done.

use crate::copy::{self, CopyError, Route, Summary};
use crate::via::{Missed, Via};
use crate::Error;
use nixpipe_host::target::{self, Target, TargetSpec};
use nixpipe_store::record::Record;
use nixpipe_store::store_path::StorePath;
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

/// How a rollout hands out its hosts.
#[derive(Clone, Debug)]
pub struct Rollout {
    /// Hosts worked on at once.
    pub jobs: usize,
    /// Hosts at a time, each batch only once the one before went well.
    pub batch: Option<usize>,
    /// Start no more hosts once one has failed.
    pub fail_fast: bool,
}

impl Default for Rollout {
    fn default() -> Rollout {
        Rollout { jobs: DEFAULT_JOBS, batch: None, fail_fast: false }
    }
}

/// What a rollout did with one host.
pub enum Step<R> {
    Done(R),
    /// Never started: the rollout stopped after the host of this label failed.
    NotReached(String),
}

impl Rollout {
    /// Runs `work` on every item as the rollout says; `report` sees each
    /// item's step as it comes. `failed` tells a failure (and the label it
    /// stops the rollout under) from a success.
    pub fn run<T: Sync, R>(
        &self,
        items: &[T],
        work: impl Fn(&T) -> R + Sync,
        failed: impl Fn(&T, &R) -> Option<String> + Sync,
        mut report: impl FnMut(&T, Step<R>) + Send,
    ) {
        let batch = self.batch.unwrap_or(items.len().max(1));
        let jobs = self.batch.unwrap_or(self.jobs);
        let stops = self.batch.is_some() || self.fail_fast;
        let mut stopped_by: Option<String> = None;
        for chunk in items.chunks(batch) {
            let skipped: Vec<usize> = match &stopped_by {
                Some(_) => (0..chunk.len()).collect(),
                None => each(chunk, jobs, &work, |item, result| {
                    let failure = failed(item, &result);
                    report(item, Step::Done(result));
                    if let (Some(label), true, None) = (&failure, stops, &stopped_by) {
                        stopped_by = Some(label.clone());
                    }
                    !(failure.is_some() && self.fail_fast)
                }),
            };
            for i in skipped {
                report(&chunk[i], Step::NotReached(stopped_by.clone().unwrap_or_else(|| "a host".into())));
            }
        }
    }
}

/// Pairs every record with its target before anything is done, so a record
/// without a usable target is bad input and nothing happens.
pub fn with_targets(
    records: Vec<Record>,
    spec: Option<&TargetSpec>,
    unnamed: Option<Target>,
) -> Result<Vec<(Record, Target)>, Error> {
    records
        .into_iter()
        .map(|record| match target::for_record(spec, &record, unnamed.clone()) {
            Ok(target) => Ok((record, target)),
            Err(e) => Err(Error::Usage(format!("{}: {e}", record.label()))),
        })
        .collect()
}

/// Copies each route's closures, up to `jobs` routes at once: directly, or
/// uploaded once to `via` and fetched from there by every target. `report`
/// sees each route's result as it comes. Err: the upload to `via` failed,
/// and no target got anything. With --dry-run and `via`, only the upload
/// is told.
pub fn copy_routes(
    routes: &[(Route, Vec<Record>)],
    via: Option<&Via>,
    options: &copy::Options,
    jobs: usize,
    mut report: impl FnMut(&Route, &[Record], Result<Summary, CopyError>) + Send,
) -> Result<(), CopyError> {
    let all: Vec<&StorePath> = routes.iter().flat_map(|(_, records)| records.iter().map(|r| &r.path)).collect();
    let upload_failed = |via: &Via, error| CopyError::Upload { via: via.to_string(), error: Box::new(error) };
    let mut copy_each = |fetcher: Option<&crate::via::Fetcher>| {
        let fetching = via.map(|via| format!("fetching from {via}")).unwrap_or_default();
        each(
            routes,
            jobs,
            |(route, records)| match fetcher {
                Some(fetcher) => {
                    let _line = options.reports.host_line(&route.to.to_string(), &fetching);
                    fetcher.fetch(&route.to, records, options)
                }
                None => copy::copy_records(route, records, options).map_err(Missed::Failed),
            },
            |(route, records), copied| {
                match copied {
                    // The upload's error is said once, by the caller.
                    Err(Missed::NoUpload) => return false,
                    Err(Missed::Failed(why)) => report(route, records, Err(why)),
                    Ok(summary) => report(route, records, Ok(summary)),
                }
                true
            },
        )
    };
    match via {
        Some(via) if options.dry_run => via.upload(&all, options).map(drop).map_err(|e| upload_failed(via, e)),
        Some(via) => {
            via.deliver(&all, options, |fetcher| copy_each(Some(fetcher))).map(drop).map_err(|e| upload_failed(via, e))
        }
        None => {
            copy_each(None);
            Ok(())
        }
    }
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
    fn a_batch_with_a_failure_stops_the_rollout() {
        let items: Vec<u32> = (0..6).collect();
        let rollout = Rollout { jobs: 8, batch: Some(2), fail_fast: false };
        let mut steps = Vec::new();
        rollout.run(
            &items,
            |i| *i,
            |i, _| (*i == 2).then(|| format!("h{i}")),
            |i, step| {
                steps.push(match step {
                    Step::Done(_) => format!("{i} done"),
                    Step::NotReached(by) => format!("{i} after {by}"),
                })
            },
        );
        steps.sort();
        assert_eq!(steps, ["0 done", "1 done", "2 done", "3 done", "4 after h2", "5 after h2"]);
    }

    #[test]
    fn stops_handing_out_work_when_told() {
        let items: Vec<u32> = (0..10).collect();
        let skipped = each(&items, 1, |i| *i, |_, i| i < 2);
        assert_eq!(skipped, (3..10).collect::<Vec<usize>>());
    }
}
