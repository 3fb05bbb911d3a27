//! Activating a NixOS system on a target: check that it is the right path
//! on the right host, add a generation to the system profile, and run the
//! system's own `bin/switch-to-configuration`.

use crate::process;
use crate::record::Record;
use crate::target::Target;

pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// What switch-to-configuration is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    /// Make it the boot default and activate it now
    Switch,
    /// Make it the boot default, activate it at the next boot
    Boot,
    /// Activate it now, leave the boot default alone
    Test,
    /// Show what activating would change, change nothing
    DryActivate,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Switch => "switch",
            Action::Boot => "boot",
            Action::Test => "test",
            Action::DryActivate => "dry-activate",
        }
    }

    /// Only these add a generation to the system profile, as in nixos-rebuild.
    fn sets_profile(self) -> bool {
        matches!(self, Action::Switch | Action::Boot)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Options {
    pub action: Action,
    pub hostname_check: bool,
    pub dry_run: bool,
}

/// Facts read from the target in one read-only round trip.
const PROBE_SCRIPT: &str = r#"p=$1
printf 'hostname=%s\n' "$(cat /proc/sys/kernel/hostname)"
printf 'uid=%s\n' "$(id -u)"
if nix-store --check-validity "$p" 2>/dev/null; then echo valid=1; else echo valid=0; fi
if [ -f "$p/nixos-version" ] && [ -x "$p/bin/switch-to-configuration" ]; then echo nixos=1; else echo nixos=0; fi
if [ -f "$p/etc/hostname" ]; then printf 'configured=%s\n' "$(cat "$p/etc/hostname")"; fi
"#;

#[derive(Debug, Default, PartialEq, Eq)]
struct Probe {
    hostname: String,
    uid: String,
    valid: bool,
    nixos: bool,
    /// The hostname the system itself is configured with (`etc/hostname`).
    configured: Option<String>,
}

impl Probe {
    fn parse(output: &str) -> Probe {
        let mut probe = Probe::default();
        for (key, value) in output.lines().filter_map(|l| l.split_once('=')) {
            match key {
                "hostname" => probe.hostname = value.to_owned(),
                "uid" => probe.uid = value.to_owned(),
                "valid" => probe.valid = value == "1",
                "nixos" => probe.nixos = value == "1",
                "configured" => probe.configured = Some(value.to_owned()),
                _ => {}
            }
        }
        probe
    }
}

/// Activates one record on `target`, or says in one line why not.
pub fn activate(target: &Target, record: &Record, opts: &Options) -> Result<(), String> {
    let path = record.path.as_str();
    let probe = Probe::parse(&target.run(&["sh", "-c", PROBE_SCRIPT, "sh", path])?);
    check(target, record, &probe, opts)?;
    if opts.dry_run {
        crate::cli::note(&format!("{}: would {} {target} to {path}", record.label(), opts.action.as_str()));
        return Ok(());
    }
    if opts.action.sets_profile() {
        target
            .run(&["nix-env", "--profile", SYSTEM_PROFILE, "--set", path])
            .map_err(|e| format!("could not set the system profile: {e}"))?;
    }
    switch_to_configuration(target, path, opts.action)
}

/// Everything that must hold before anything on the target changes.
fn check(target: &Target, record: &Record, probe: &Probe, opts: &Options) -> Result<(), String> {
    let path = record.path.as_str();
    if !probe.valid {
        return Err(format!("{path} is not on {target}; run nixpipe-copy first"));
    }
    if !probe.nixos {
        return Err(format!("{path} is not a NixOS system (no nixos-version or bin/switch-to-configuration)"));
    }
    if opts.hostname_check {
        check_hostname(target, record, probe)?;
    }
    if probe.uid != "0" {
        return Err(format!(
            "logged in to {target} as uid {}, but activation needs root (sudo is not implemented yet); use root@",
            probe.uid
        ));
    }
    Ok(())
}

/// The host must be the one the record is for: its NAME, or for a record
/// without one, the hostname the system is configured with (etc/hostname).
/// A record with neither is not checked.
fn check_hostname(target: &Target, record: &Record, probe: &Probe) -> Result<(), String> {
    let Some(expected) = record.name.as_ref().or(probe.configured.as_ref()) else {
        return Ok(());
    };
    if *expected == probe.hostname {
        return Ok(());
    }
    Err(format!(
        "{target} is host '{}', not '{expected}'; nothing changed (--no-hostname-check to deploy anyway)",
        probe.hostname
    ))
}

fn switch_to_configuration(target: &Target, path: &str, action: Action) -> Result<(), String> {
    let program = format!("{path}/bin/switch-to-configuration");
    let mut cmd = target.command(&[&program, action.as_str()])?;
    let status = process::run_logging(&mut cmd)?;
    if status.success() {
        return Ok(());
    }
    if !target.is_local() && status.code() == Some(255) {
        return Err(format!("lost the connection to {target} during switch-to-configuration {}", action.as_str()));
    }
    Err(format!(
        "switch-to-configuration {} failed on {target} ({})",
        action.as_str(),
        process::describe_status(status)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_path::StorePath;

    fn record(name: Option<&str>) -> Record {
        let p = StorePath::parse("/nix/store/36m5mhfn262qgji13vrgp907an576qjz-top").unwrap();
        Record::new(name.map(Into::into), p)
    }

    fn ready(hostname: &str) -> Probe {
        Probe { hostname: hostname.into(), uid: "0".into(), valid: true, nixos: true, configured: None }
    }

    const OPTS: Options = Options { action: Action::Switch, hostname_check: true, dry_run: false };

    #[test]
    fn parses_the_probe() {
        let p = Probe::parse("hostname=web1\nuid=0\nvalid=1\nnixos=0\nconfigured=web1\n");
        assert_eq!(
            p,
            Probe {
                hostname: "web1".into(),
                uid: "0".into(),
                valid: true,
                nixos: false,
                configured: Some("web1".into())
            }
        );
    }

    #[test]
    fn refuses_a_host_with_another_name() {
        let e = check(&Target::Local, &record(Some("web1")), &ready("db1"), &OPTS).unwrap_err();
        assert!(e.contains("is host 'db1', not 'web1'"), "{e}");
        let off = Options { hostname_check: false, ..OPTS };
        assert!(check(&Target::Local, &record(Some("web1")), &ready("db1"), &off).is_ok());
    }

    #[test]
    fn the_record_name_decides_over_the_configured_hostname() {
        let web1_system_on_web1 = Probe { configured: Some("web1".into()), ..ready("web1") };
        assert!(check(&Target::Local, &record(Some("db1")), &web1_system_on_web1, &OPTS).is_err());
        assert!(check(&Target::Local, &record(Some("web1")), &web1_system_on_web1, &OPTS).is_ok());
    }

    #[test]
    fn unnamed_records_are_checked_against_the_configured_hostname() {
        let on = |host: &str| Probe { configured: Some("web1".into()), ..ready(host) };
        assert!(check(&Target::Local, &record(None), &on("web1"), &OPTS).is_ok());
        assert!(check(&Target::Local, &record(None), &on("db1"), &OPTS).is_err());
        assert!(check(&Target::Local, &record(None), &ready("db1"), &OPTS).is_ok(), "nothing to check against");
    }

    #[test]
    fn refuses_missing_and_non_nixos_paths() {
        let missing = Probe { valid: false, ..ready("web1") };
        assert!(check(&Target::Local, &record(Some("web1")), &missing, &OPTS)
            .unwrap_err()
            .contains("run nixpipe-copy first"));
        let not_nixos = Probe { nixos: false, ..ready("web1") };
        assert!(check(&Target::Local, &record(Some("web1")), &not_nixos, &OPTS)
            .unwrap_err()
            .contains("not a NixOS system"));
    }
}
