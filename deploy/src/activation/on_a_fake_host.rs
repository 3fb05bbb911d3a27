//! Activation against a scripted host (nixpipe-host's `fake`): every exit
//! status and host state of a switch, as job.sh reports them, turned into
//! the verdict the user reads, and what runs on the host in which order;
//! in milliseconds, without a testbed. The end-to-end tests
//! (tests/tests/nixos.rs) prove the same cases against real hosts.

use super::*;
use nixpipe_host::fake::{Call, FakeHost, Reply, Step};
use nixpipe_host::privilege::Privilege;
use nixpipe_host::Target;
use nixpipe_store::StorePath;

const SYSTEM: &str = "/nix/store/36m5mhfn262qgji13vrgp907an576qjz-nixos-system-web1";
/// A deploy user whom sudo lets in without a password: root runs show their sudo.
const FACTS: &str = "host uid=1000 init=systemd machine=x86_64 sudo=1";

/// The probe of a host that can take SYSTEM, with `changed` fields.
fn probe(changed: &[(&str, &str)]) -> String {
    let mut fields: Vec<(&str, &str)> = vec![
        ("hostname", "web1"),
        ("current", "/nix/store/00000000000000000000000000000000-old"),
        ("resolved", SYSTEM),
        ("valid", "1"),
        ("nixos", "1"),
        ("system", "x86_64-linux"),
        ("native", "x86_64-linux"),
    ];
    for (key, value) in changed {
        fields.retain(|(k, _)| k != key);
        fields.push((key, value));
    }
    let fields: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("probe {}", fields.join(" "))
}

/// A host whose probe says `probe` and whose job tells `job`.
fn host(probe: String, job: Vec<Step>) -> FakeHost {
    let probe: &'static str = Box::leak(probe.into_boxed_str());
    FakeHost::new(move |call: &Call| match call.script {
        Some(Script::Facts) => Reply::events(&[FACTS]),
        Some(Script::Probe) => Reply::events(&[FACTS, probe]),
        Some(Script::Job) => Reply::job(&job),
        _ => Reply::events(&["key name=k"]),
    })
}

fn activate_on(host: &FakeHost, record: &Record, opts: &Options) -> Activation {
    activate_telling(host, record, opts).0
}

/// What a reporter is told, kept.
#[derive(Default)]
struct Kept(std::sync::Mutex<Vec<Report>>);

impl nixpipe_host::report::Reporter for Kept {
    fn report(&self, report: Report) {
        self.0.lock().unwrap().push(report);
    }

    fn copy_progress(&self, _: &str, _: u64, _: u64) -> Box<dyn nixpipe_host::report::CopyProgress + '_> {
        unreachable!("an activation copies nothing")
    }

    fn host_line(&self, _: &str, _: &str) -> Box<dyn Send + '_> {
        Box::new(())
    }

    fn paused(&self, f: &mut dyn FnMut()) {
        f()
    }
}

/// The activation, and what it reported.
fn activate_telling(host: &FakeHost, record: &Record, opts: &Options) -> (Activation, Vec<Report>) {
    let privilege = Privilege::default();
    let kept: &'static Kept = Box::leak(Box::default());
    let reports = nixpipe_host::report::Reports::to(kept);
    let session = Session::with_runner(Target::parse("deploy@web1").unwrap(), &privilege, reports, host);
    let activation = activate(&session, Some(record), opts);
    let told = kept.0.lock().unwrap().clone();
    (activation, told)
}

fn record() -> Record {
    Record::new(Some("web1".into()), StorePath::parse(SYSTEM).unwrap())
}

fn switch() -> Options {
    Options { hostname_check: true, ..Options::default() }
}

/// The job's steps up to a switch that exited with `status`, then its result.
fn job(exited: Option<&'static str>, result: &'static str) -> Vec<Step> {
    let mut steps = vec![
        Step::Event("started"),
        Step::Event("previous path=/nix/store/00000000000000000000000000000000-old"),
        Step::Log("activating the configuration..."),
    ];
    steps.extend(exited.map(Step::Event));
    steps.push(Step::Event(result));
    steps
}

fn error_of(activation: &Activation) -> String {
    activation.error().map(ToString::to_string).unwrap_or_default()
}

#[test]
fn a_switch_that_went_well_is_activated() {
    let mut steps = job(None, "result outcome=ok");
    steps.insert(2, Step::Event("switching action=switch system=/nix/store/x"));
    let host = host(probe(&[]), steps);
    let (activation, told) = activate_telling(&host, &record(), &switch());
    assert!(matches!(activation.verdict, Verdict::Activated), "{:?}", activation.verdict);
    assert_eq!(
        told,
        [
            Report::Switching { label: "web1".into(), action: "switch".into(), system: "/nix/store/x".into() },
            Report::Step { label: "web1".into(), line: "activating the configuration...".into() },
        ]
    );
    let launch = host.calls().into_iter().find(|c| c.is(Script::Job, Some("launch"))).expect("launched");
    assert_eq!(
        (launch.arg("action"), launch.arg("mode"), launch.arg("system")),
        (Some("switch"), Some("set"), Some(SYSTEM))
    );
    assert!(launch.root, "the job runs as root");
    assert!(launch.arg("root").unwrap().ends_with(&format!("={SYSTEM}")));
}

#[test]
fn exit_1_after_activating_is_a_full_rollback() {
    let exited = "exited status=1 activated=1";
    let host = host(probe(&[]), job(Some(exited), "result outcome=failed detail=rolled-back"));
    let activation = activate_on(&host, &record(), &switch());
    let Verdict::Failed(ActivationError::SwitchFailed { exited, rollback, .. }) = &activation.verdict else {
        panic!("{:?}", activation.verdict)
    };
    assert_eq!((*exited, *rollback), (Some(job::Exited { status: 1, activated: true }), Rollback::RolledBack));
    assert!(error_of(&activation).contains("(exit 1) after it had begun activating"), "{}", error_of(&activation));
    assert_eq!(activation.error().unwrap().changed(), Changed::RolledBack);
}

#[test]
fn exit_1_before_activating_puts_only_the_profile_back() {
    let exited = "exited status=1 activated=0";
    let host = host(probe(&[]), job(Some(exited), "result outcome=not-activated detail=rolled-back"));
    let activation = activate_on(&host, &record(), &switch());
    assert!(
        matches!(activation.verdict, Verdict::Failed(ActivationError::NotActivated { .. })),
        "{:?}",
        activation.verdict
    );
    assert_eq!(activation.error().unwrap().changed(), Changed::Nothing, "the profile is back");
}

#[test]
fn exit_100_on_switch_is_a_reboot_needed() {
    let host = host(probe(&[]), job(Some("exited status=100 activated=0"), "result outcome=reboot-needed"));
    let activation = activate_on(&host, &record(), &switch());
    assert!(matches!(activation.verdict, Verdict::RebootNeeded), "{:?}", activation.verdict);
    assert_eq!(activation.json("deploy@web1", Action::Switch).needs_reboot, Some(true));
}

#[test]
fn exit_100_on_test_is_refused_and_promises_no_reboot() {
    let host = host(probe(&[]), job(Some("exited status=100 activated=0"), "result outcome=init-changed"));
    let activation = activate_on(&host, &record(), &Options { action: Action::Test, ..switch() });
    assert!(
        matches!(activation.verdict, Verdict::Refused(ActivationError::InitChanged { .. })),
        "{:?}",
        activation.verdict
    );
    assert_eq!(activation.json("deploy@web1", Action::Test).needs_reboot, None);
}

#[test]
fn exit_4_names_the_failed_units_and_what_became_of_the_system() {
    let result = "result outcome=units-failed detail=rolled-back units=a.service,b.service";
    let host = host(probe(&[]), job(Some("exited status=4 activated=1"), result));
    let activation = activate_on(&host, &record(), &switch());
    assert_eq!(activation.error().unwrap().changed(), Changed::RolledBack);
    let json = activation.json("deploy@web1", Action::Switch);
    assert_eq!(
        (json.result, json.failed_units, json.rolled_back),
        ("units-failed", vec!["a.service".into(), "b.service".into()], true)
    );
}

#[test]
fn another_activation_or_nixos_lock_is_refused_with_nothing_changed() {
    for (result, wording) in [
        ("result outcome=locked detail=alice@desk", "another nixpipe activation is running on deploy@web1: alice@desk"),
        ("result outcome=busy detail=nixos-rebuild", "nixos-rebuild"),
    ] {
        let host = host(probe(&[]), vec![Step::Event("started"), Step::Event(result)]);
        let activation = activate_on(&host, &record(), &switch());
        assert!(matches!(activation.verdict, Verdict::Refused(_)), "{result}: {:?}", activation.verdict);
        assert!(error_of(&activation).contains(wording), "{}", error_of(&activation));
    }
}

#[test]
fn a_job_gone_from_the_host_is_lost_and_says_where_its_log_was() {
    let host = host(probe(&[]), job(None, "result outcome=gone"));
    let activation = activate_on(&host, &record(), &switch());
    assert!(matches!(activation.verdict, Verdict::Failed(ActivationError::Lost { .. })), "{:?}", activation.verdict);
}

#[test]
fn what_the_probe_refuses_never_reaches_the_job() {
    for (changed, wording) in [
        (&[("nixos", "0")][..], "is not a NixOS system"),
        (&[("valid", "0")][..], "run nixpipe-copy first"),
        (&[("system", "aarch64-linux"), ("emulated", "aarch64-linux")][..], "only under emulation"),
        (&[("hostname", "db1")][..], "db1"),
    ] {
        let host = host(probe(changed), Vec::new());
        let activation = activate_on(&host, &record(), &switch());
        assert!(matches!(activation.verdict, Verdict::Refused(_)), "{changed:?}: {:?}", activation.verdict);
        assert!(error_of(&activation).contains(wording), "{changed:?}: {}", error_of(&activation));
        assert!(!host.calls().iter().any(|c| c.is(Script::Job, None)), "{changed:?}");
        assert_eq!(activation.error().unwrap().changed(), Changed::Nothing, "{changed:?}");
    }
}

/// A switch inhibitor's value, as probe.sh sends them (base64 of the JSON).
fn inhibitors(json: &str) -> String {
    base64::Engine::encode(&base64::engine::general_purpose::STANDARD, json)
}

#[test]
fn a_changed_switch_inhibitor_refuses_a_switch_or_makes_it_a_boot() {
    let (new, current) = (inhibitors(r#"{"systemd":"256"}"#), inhibitors(r#"{"systemd":"255"}"#));
    let changed = probe(&[("inhibitors", &new), ("inhibitors-current", &current)]);
    let refused = host(changed.clone(), job(None, "result outcome=ok"));
    let activation = activate_on(&refused, &record(), &switch());
    assert!(
        matches!(activation.verdict, Verdict::Refused(ActivationError::Inhibited { .. })),
        "{:?}",
        activation.verdict
    );
    assert!(!refused.calls().iter().any(|c| c.is(Script::Job, None)));
    let booting = host(changed, job(None, "result outcome=ok"));
    let activation = activate_on(&booting, &record(), &Options { if_inhibited: IfInhibited::Boot, ..switch() });
    assert_eq!(activation.action, Some(Action::Boot));
    let launch = booting.calls().into_iter().find(|c| c.is(Script::Job, Some("launch"))).expect("launched");
    assert_eq!(launch.arg("action"), Some("boot"));
}

#[test]
fn a_dry_run_checks_everything_and_runs_no_job() {
    let host = host(probe(&[]), job(None, "result outcome=ok"));
    let activation = activate_on(&host, &record(), &Options { dry_run: true, ..switch() });
    assert!(matches!(activation.verdict, Verdict::Checked), "{:?}", activation.verdict);
    let scripts: Vec<_> = host.calls().iter().map(|c| c.script).collect();
    assert_eq!(scripts, [Some(Script::Probe)]);
}

#[test]
fn keys_go_before_the_job_or_after_it_as_their_upload_at_says() {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "secret").unwrap();
    let key = |name: &str, at: &str| {
        serde_json::json!({"name": name, "keyFile": file.path(), "destDir": "/run/keys", "user": "root",
                           "group": "root", "permissions": "0600", "uploadAt": at})
    };
    let mut record = record();
    record
        .extra
        .insert("keys".into(), serde_json::json!([key("after", "post-activation"), key("before", "pre-activation")]));
    let host = host(probe(&[]), job(None, "result outcome=ok"));
    let activation = activate_on(&host, &record, &Options { keys: true, ..switch() });
    assert!(matches!(activation.verdict, Verdict::Activated), "{:?}", activation.verdict);
    let order: Vec<String> = host
        .calls()
        .iter()
        .filter_map(|c| match c.script {
            Some(Script::Keys) => Some(format!("keys {}", c.list[0])),
            Some(Script::Job) => c.verb.clone(),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["keys before", "launch", "keys after"]);
    assert!(host
        .calls()
        .iter()
        .filter(|c| c.is(Script::Keys, None))
        .all(|c| c.root && !c.list.contains(&"secret".to_owned())));
}
