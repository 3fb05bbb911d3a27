//! --diff: what changes on a host from the system it runs to the new one,
//! read from the host's own store (nvd's view, [`ClosureDiff`]).

use nixpipe_host::event::Event;
use nixpipe_host::report::Report;
use nixpipe_host::session::{Args, Run, Script, Session};
use nixpipe_store::closure_diff::ClosureDiff;

/// Reports what changes on the session's host from `current` (None:
/// nothing runs yet) to `new`, both there, for the record `label`.
pub fn report(session: &Session, label: &str, current: Option<&str>, new: &str) {
    let label = label.to_owned();
    let Some(current) = current else {
        session.reports.report(Report::NothingToCompare { label, target: session.target.to_string() });
        return;
    };
    let (before, after) = (current.to_owned(), new.to_owned());
    match session.events(&Run::script(Script::Requisites, &Args::new().set("before", current).set("after", new))) {
        Ok(events) => {
            let mut closures: [Vec<&str>; 2] = Default::default();
            for event in &events {
                if let Event::Requisite { after, path } = event {
                    closures[*after as usize].push(path);
                }
            }
            let diff = ClosureDiff::new(&closures[0], &closures[1]);
            session.reports.report(Report::ClosureDiff { label, before, after, diff });
        }
        Err(e) => session.reports.report(Report::CannotCompare { label, before, after, why: e.to_string() }),
    }
}
