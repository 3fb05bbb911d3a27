//! Building on another host: evaluate here, build there (`--build-on`,
//! `nixpipe-microvm --build-on-host`).

use crate::copy::{copy_closures, CopyError, Destination, Options, Route};
use crate::nix::NixError;
use nixpipe_host::report::Reports;
use nixpipe_host::session::{Run, Session, SessionError};
use nixpipe_host::Target;
use nixpipe_store::StorePath;

/// Why a build on another host failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BuildError {
    #[error("cannot send the derivations to {target}: {error}")]
    SendDerivations { target: String, error: Box<CopyError> },
    #[error(transparent)]
    Nix(#[from] NixError),
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Builds `drvs` on `target` (evaluate here, build there): their closures
/// go there as nixpipe-copy sends them, then one `nix-store --realise`
/// builds them all, its log on stderr. The output paths, in order; they stay
/// on the target.
pub(crate) fn realise_on(target: &Target, drvs: &[StorePath], reports: Reports) -> Result<Vec<StorePath>, BuildError> {
    let route = Route { from: Target::Local, to: Destination::Store(target.clone()) };
    let refs: Vec<&StorePath> = drvs.iter().collect();
    copy_closures(&route, &refs, &Options { reports, ..Options::default() })
        .map_err(|e| BuildError::SendDerivations { target: target.to_string(), error: Box::new(e) })?;
    let flags = &crate::nix::flags().common;
    let display = reports.build_display();
    let log_format = display.as_ref().map_or(&[][..], |_| &crate::nix::LOG_FORMAT[..]);
    let argv: Vec<&str> = ["nix-store", "--realise"]
        .into_iter()
        .chain(flags.iter().map(String::as_str))
        .chain(log_format.iter().copied())
        .chain(drvs.iter().map(StorePath::as_str))
        .collect();
    let session = Session::as_login_user(target.clone(), reports);
    let output = match display {
        // On a terminal: the host's builds in the display, as ours are.
        Some(display) => {
            let child = session.spawn(&Run::program(&argv))?;
            crate::nix::followed(child, &*display).map_err(|e| NixError::BadOutput {
                program: format!("nix-store --realise on {target}"),
                output: String::new(),
                why: e.to_string(),
            })?
        }
        // Else its build log goes to our stderr as it comes.
        None => session.output(&Run::program(&argv).showing_stderr())?,
    };
    if !output.status.success() {
        return Err(NixError::BuildOnFailed { target: target.to_string() }.into());
    }
    let outputs = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            StorePath::parse(line).map_err(|e| NixError::BadOutput {
                program: format!("nix-store --realise on {target}"),
                output: line.to_owned(),
                why: e.to_string(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(outputs)
}
