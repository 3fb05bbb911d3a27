//! Pipes keep what they are given: every step that reads JSON records
//! writes JSON records, with the fields it does not own passed on, and
//! plain records stay plain, unless --json or --plain says otherwise.

use nixpipe_tests::Testbed;
use serde_json::Value;

/// web1's JSON record from nixpipe-eval, with a field no nixpipe step owns.
fn json_record(tb: &Testbed) -> String {
    let run = tb.sh("nixpipe-eval -f \"$FIXTURES/web1/configuration.nix\" --nixpkgs \"$NIXPKGS\" --json").ok();
    let mut record: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    record["ticket"] = "OPS-42".into();
    record.to_string()
}

fn one_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not one JSON record ({e}): {stdout}"))
}

#[test]
fn json_records_stay_json_through_copy_activate_and_status_with_fields_they_do_not_own() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let t = web1.target();
    let record = json_record(&tb);
    std::fs::write(tb.path().join("record.json"), format!("{record}\n")).unwrap();

    let copied = one_json(&tb.sh(&format!("nixpipe-copy --to {t} < record.json")).ok().stdout);
    assert_eq!(copied["ticket"], "OPS-42");
    assert!(copied["copy"].is_object(), "copy adds its own: {copied}");
    let activated = one_json(
        &tb.sh(&format!("nixpipe-copy --to {t} < record.json | nixpipe-activate --on {t} switch")).ok().stdout,
    );
    assert_eq!((activated["ticket"].as_str(), activated["result"].as_str()), (Some("OPS-42"), Some("activated")));
    let status = one_json(&tb.sh(&format!("nixpipe-status --on {t} < record.json")).ok().stdout);
    assert_eq!((status["ticket"].as_str(), status["runs"].as_bool()), (Some("OPS-42"), Some(true)));
}

#[test]
fn plain_records_stay_plain_and_plain_makes_json_plain() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let t = web1.target();
    let plain = tb.sh("nixpipe-eval -f \"$FIXTURES/web1/configuration.nix\" --nixpkgs \"$NIXPKGS\"").ok().stdout;
    assert!(plain.starts_with("web1\t/nix/store/"), "{plain}");

    let copied = tb.sh(&format!("printf '%s' '{plain}' | nixpipe-copy --to {t}")).ok().stdout;
    assert_eq!(copied, plain);
    let status = tb.sh(&format!("printf '%s' '{plain}' | nixpipe-status --on {t}")).ok().stdout;
    assert_eq!(status, plain);

    let record = json_record(&tb);
    let made_plain = tb.sh(&format!("echo '{record}' | nixpipe-copy --plain --to {t}")).ok().stdout;
    assert_eq!(made_plain, plain);
    let made_json = one_json(&tb.sh(&format!("printf '%s' '{plain}' | nixpipe-copy --json --to {t}")).ok().stdout);
    assert_eq!(made_json["name"], "web1");
    let both = tb.sh(&format!("echo '{record}' | nixpipe-copy --plain --json --to {t}"));
    assert_eq!(both.code, 2, "{}", both.stderr);
}

#[test]
fn bundle_and_microvm_install_keep_json_records_json_with_fields_they_do_not_own() {
    let tb = Testbed::new();
    let host = tb.host("host");
    let record = json_record(&tb);

    let bundled = tb
        .sh(&format!(
            "echo '{record}' | nixpipe-bundle --config \"$FIXTURES/web1/configuration.nix\" --nixpkgs \"$NIXPKGS\""
        ))
        .ok();
    let bundled = one_json(&bundled.stdout);
    assert_eq!(bundled["ticket"], "OPS-42");
    assert!(bundled["path"].as_str().unwrap().ends_with("-nixpipe-bundle-web1"), "{bundled}");
    let plain = tb
        .sh(&format!("echo '{record}' | nixpipe-bundle --plain --config \"$FIXTURES/web1/configuration.nix\" --nixpkgs \"$NIXPKGS\""))
        .ok();
    assert!(plain.stdout.starts_with("web1\t/nix/store/"), "{}", plain.stdout);

    // A MicroVM runner's JSON record, with the same field.
    let runner = tb
        .sh("nixpipe-eval --microvm-runner -f \"$FIXTURES/web1/configuration.nix\" --nixpkgs \"$NIXPKGS\" --json")
        .ok();
    let mut runner: Value = serde_json::from_str(runner.stdout.trim()).unwrap();
    runner["ticket"] = "OPS-43".into();
    let installed = tb.sh(&format!("echo '{runner}' | nixpipe-microvm install --on {}", host.target())).ok();
    let installed = one_json(&installed.stdout);
    assert_eq!((installed["ticket"].as_str(), installed["changed"].as_bool()), (Some("OPS-43"), Some(true)));
}
