//! End to end: nixpipe-eval | nixpipe-copy | nixpipe-activate against
//! testbed hosts, and what each step does with bad input.

use nixpipe_tests::Testbed;

const EVAL_WEB1: &str = r#"nixpipe-eval -f "$FIXTURES/web1/configuration.nix" --nixpkgs "$NIXPKGS""#;

#[test]
fn eval_copy_activate_deploys_a_configuration_to_a_fresh_host() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let t = web1.target();

    let run = tb.sh(&format!("{EVAL_WEB1} | nixpipe-copy --to {t} | nixpipe-activate --on {t} switch")).ok();

    let [line] = run.stdout_lines()[..] else { panic!("one record expected: {:?}", run.stdout) };
    let (name, toplevel) = line.split_once('\t').unwrap();
    assert_eq!(name, "web1");
    assert_eq!(web1.system_profile().as_deref(), Some(toplevel));
    assert_eq!(web1.sh("readlink /nix/var/nix/profiles/system").trim(), "system-1-link");
    assert_eq!(
        web1.switch_log(),
        [format!("action=switch toplevel={toplevel} uid=0 tty=no arch={}", std::env::consts::ARCH)]
    );
    assert_eq!(web1.sh("readlink /run/current-system").trim(), toplevel);
    web1.sh(&format!("nix-store --verify-path $(nix-store --query --requisites {toplevel})"));
}

#[test]
fn a_second_deployment_adds_a_generation() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let first = tb.system("web1");
    let second = tb.system_with("web1", r#"system.nixos.version = "2";"#);
    assert_ne!(first, second);
    let t = web1.target();

    tb.sh(&format!("nixpipe-copy --to {t} {first} {second}")).ok();
    tb.sh(&format!("nixpipe-activate --on {t} switch $'web1\\t{first}'")).ok();
    tb.sh(&format!("printf 'web1\\t%s\\n' {second} | nixpipe-activate --on {t} boot")).ok();

    assert_eq!(web1.system_profile().as_deref(), Some(&*second));
    assert_eq!(web1.sh("readlink /nix/var/nix/profiles/system-1-link").trim(), first);
    let log = web1.switch_log();
    assert_eq!(log.len(), 2);
    assert!(log[1].starts_with("action=boot "), "{log:?}");
}

#[test]
fn garbage_on_stdin_exits_2_naming_the_line_and_copies_nothing() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let good = tb.system("web1");

    let run = tb.sh(&format!("printf 'web1\\t%s\\n/etc/passwd\\n' {good} | nixpipe-copy --to {}", web1.target()));

    assert_eq!(run.code, 2);
    let error = run.error_line();
    assert!(error.starts_with("nixpipe-copy: line 2: not a store path"), "{error}");
    assert!(run.stdout.is_empty());
    assert_eq!(web1.sh("ls /nix/store 2>/dev/null | wc -l").trim(), "0", "nothing may reach the host");
}

#[test]
fn activate_refuses_a_host_with_another_name_and_changes_nothing() {
    let tb = Testbed::new();
    let db1 = tb.host("db1");
    let t = db1.target();
    let web1 = tb.system("web1");
    tb.sh(&format!("nixpipe-copy --to {t} {web1}")).ok();

    let run = tb.sh(&format!("printf 'web1\\t%s\\n' {web1} | nixpipe-activate --on {t} switch"));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("is host 'db1', not 'web1'; nothing changed"), "{error}");
    assert_eq!(db1.system_profile(), None);
    assert!(db1.switch_log().is_empty());
}

#[test]
fn activate_refuses_a_system_that_was_not_copied() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");

    let run = tb.sh(&format!("nixpipe-activate --on {} switch {system}", web1.target()));

    assert_eq!(run.code, 1);
    assert!(run.error_line().ends_with("; run nixpipe-copy first"), "{}", run.stderr);
    assert_eq!(web1.system_profile(), None);
}

#[test]
fn activate_refuses_a_store_path_that_is_not_a_nixos_system() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let hello = tb.build("'<nixpkgs>' -A hello");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {hello}")).ok();

    let run = tb.sh(&format!("nixpipe-activate --on {t} switch {hello}"));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("is not a NixOS system"), "{}", run.stderr);
    assert_eq!(web1.system_profile(), None);
}

#[test]
fn dry_run_checks_the_target_and_changes_nothing() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let t = web1.target();
    let system = tb.system("web1");
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();

    let run = tb.sh(&format!("nixpipe-activate --on {t} --dry-run switch $'web1\\t{system}'")).ok();

    assert!(run.stderr.contains(&format!("would switch {t} to {system}")), "{}", run.stderr);
    assert_eq!(run.stdout.trim(), format!("web1\t{system}"));
    assert_eq!(web1.system_profile(), None);
    assert!(web1.switch_log().is_empty());
}

#[test]
fn an_unreachable_host_fails_the_record_in_one_line() {
    let tb = Testbed::new();
    let system = tb.system("web1");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();

    let run = tb.sh(&format!("nixpipe-activate --on root@127.0.0.1:{closed} switch {system}"));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains(&format!("cannot reach root@127.0.0.1:{closed}")), "{}", run.stderr);
}

#[test]
fn a_host_whose_key_is_not_known_is_refused() {
    let tb = Testbed::new();
    let stranger = Testbed::new(); // its known_hosts has never seen web1
    let web1 = tb.host("web1");
    let system = tb.system("web1");

    let run = stranger.sh(&format!("nixpipe-copy --to {} {system}", web1.target()));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains(&format!("cannot reach {}: Host key verification failed", web1.target())), "{error}");
    assert_eq!(web1.sh("ls /nix/store 2>/dev/null | wc -l").trim(), "0");
}

#[test]
fn records_fan_out_to_the_hosts_they_name() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    // The ssh config gives the record's NAME a Host entry, as users do.
    tb.alias("web1", &web1, "root");

    tb.sh(&format!("printf 'web1\\t%s\\n' {system} | nixpipe-copy | nixpipe-activate switch")).ok();

    assert_eq!(web1.system_profile().as_deref(), Some(&*system));
}

#[test]
fn a_pipeline_logs_in_to_its_host_once_and_the_next_command_of_the_minute_not_at_all() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let t = web1.target();

    tb.sh(&format!("nixpipe-copy --to {t} $'web1\\t{system}' | nixpipe-activate --on {t} switch")).ok();
    let pipeline = web1.logins();
    tb.sh(&format!("nixpipe-status --on {t} $'web1\\t{system}'")).ok();
    let after_status = web1.logins();
    tb.sh(&format!("NIXPIPE_SSH_SHARE=no nixpipe-status --on {t} $'web1\\t{system}'")).ok();

    assert_eq!(pipeline, 1, "the copy, the probe and the job over one login");
    assert_eq!(after_status, 1, "status rode on the connection of the minute before");
    assert_eq!(web1.logins(), 2, "NIXPIPE_SSH_SHARE=no logs in on its own");
    assert_eq!(web1.sh("readlink /run/current-system").trim(), system);
}

#[test]
fn a_shared_connection_of_the_users_own_is_used_as_it_is() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    let theirs = format!("-o ControlMaster=auto -o ControlPath={}/theirs-%C -o ControlPersist=30", tb.path().display());

    let deploy = format!("nixpipe-copy --to {t} $'web1\\t{system}' | nixpipe-activate --on {t} switch");
    tb.sh(&format!("export NIX_SSHOPTS=\"$NIX_SSHOPTS {theirs}\"; {deploy}")).ok();

    assert_eq!(web1.logins(), 1, "their master carried it all");
    assert!(std::fs::read_dir(tb.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with("theirs-")));
    let ours = tb.path().join("run/nixpipe-ssh");
    assert!(!ours.exists() || std::fs::read_dir(&ours).unwrap().next().is_none(), "no master of ours");
}
