//! deployment.keys: secrets that reach their hosts with the owner and mode
//! they ask for, over ssh's stdin only, and never touch the store, argv,
//! the environment, a record or a log.

use nixpipe_tests::{Host, Run, Testbed};

/// What the secrets hold; nothing else on the machine does.
const PASSWORD: &str = "db-password-3f9a1c7e";
const TOKEN: &str = "api-token-b7d20e55";

/// A network of one machine, web1 (the testbed's configuration), whose
/// `keys` (a Nix attribute set) are its deployment.keys; the secrets' files
/// are made in the deployer's directory.
fn network_with_keys(tb: &Testbed, keys: &str) -> String {
    let dir = tb.path().display().to_string();
    std::fs::write(tb.path().join("password"), PASSWORD).unwrap();
    std::fs::write(tb.path().join("token"), TOKEN).unwrap();
    let network = format!(
        "{{ web1 = {{ imports = [ \"${{builtins.getEnv \"FIXTURES\"}}/web1/configuration.nix\" ]; \
         deployment.keys = {}; }}; }}\n",
        keys.replace("@dir@", &dir)
    );
    std::fs::write(tb.path().join("network.nix"), network).unwrap();
    format!("{dir}/network.nix")
}

const TWO_KEYS: &str = r#"{
  "db-password" = { keyFile = "@dir@/password"; user = "deploy"; group = "deploy"; permissions = "0640"; };
  "api-token" = { keyCommand = [ "sh" "-c" "sleep 1; cat @dir@/token" ]; destDir = "/var/lib/secrets"; uploadAt = "post-activation"; };
}"#;

/// Evaluates `network`, copies it to `on` and switches there with its keys:
/// the JSON records eval writes stay JSON through the pipe.
fn deploy_command(network: &str, on: &str) -> String {
    format!(
        "nixpipe-eval --network {network} --nixpkgs \"$NIXPKGS\" --json | nixpipe-copy --to {on} \
         | nixpipe-activate --on {on} --keys --run-key-commands switch"
    )
}

fn deploy(tb: &Testbed, network: &str, on: &str) -> Run {
    tb.sh(&deploy_command(network, on))
}

/// `stat` of a file on the host: owner, group, mode.
fn owner_and_mode(host: &Host, path: &str) -> String {
    host.sh(&format!("stat -c '%U %G %a' {path}")).trim().to_owned()
}

#[test]
fn keys_reach_the_host_with_their_owner_and_mode_before_and_after_the_switch() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let network = network_with_keys(&tb, TWO_KEYS);

    deploy(&tb, &network, &web1.target()).ok();

    assert_eq!(owner_and_mode(&web1, "/run/keys/db-password"), "deploy deploy 640");
    assert_eq!(owner_and_mode(&web1, "/var/lib/secrets/api-token"), "root root 600");
    assert_eq!(web1.sh("su -s /bin/sh deploy -c 'cat /run/keys/db-password'"), PASSWORD, "its user reads it");
    assert_eq!(web1.sh("cat /var/lib/secrets/api-token"), TOKEN);
    assert!(!web1.exec("su -s /bin/sh deploy -c 'cat /var/lib/secrets/api-token'").status.success());
    assert_eq!(web1.sh("ls -a /run/keys").split_whitespace().collect::<Vec<_>>(), [".", "..", "db-password"]);
}

#[test]
fn no_secret_is_in_a_record_a_log_or_either_store() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let network = network_with_keys(&tb, TWO_KEYS);

    let run = deploy(&tb, &network, &web1.target()).ok();
    let records = tb.sh(&format!("nixpipe-eval --network {network} --nixpkgs \"$NIXPKGS\" --json")).ok();

    for secret in [PASSWORD, TOKEN] {
        for (what, text) in [("records", &records.stdout), ("output", &run.stdout), ("log", &run.stderr)] {
            assert!(!text.contains(secret), "{what}: {text}");
        }
        assert!(records.stdout.contains("\"keyFile\""), "the source travels: {}", records.stdout);
        // The secret from a file: in grep's argv, the scan of another test would see it.
        let pattern = tb.path().join("pattern");
        std::fs::write(&pattern, secret).unwrap();
        let (pattern, host_store) = (pattern.display(), web1.dir().join("nix"));
        let found = tb.sh(&format!("grep -rlF -f {pattern} /nix/store {} 2>/dev/null || true", host_store.display()));
        assert_eq!(found.stdout.trim(), "", "in a store");
        assert!(!web1.sh("cat /var/log/* 2>/dev/null; true").contains(secret));
    }
}

#[test]
fn while_keys_go_up_no_process_has_a_secret_in_its_argv_or_environment() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let network = network_with_keys(&tb, TWO_KEYS);
    let seen = tb.path().join("seen");
    // The secrets to look for, from a file: in the scanner's own argv they
    // would be found there.
    let patterns = tb.path().join("patterns");
    std::fs::write(&patterns, format!("{PASSWORD}\n{TOKEN}\n")).unwrap();
    // Every process of the machine (the deployer's and the host's), read
    // over and over while the deploy runs: the keyCommand takes a second.
    let scan = format!(
        "while [ ! -e {done} ]; do for p in /proc/[0-9]*; do \
           cat $p/cmdline $p/environ 2>/dev/null | tr '\\0' ' ' | grep -F -f {patterns} >> {seen}; \
         done; done; true",
        done = tb.path().join("done").display(),
        patterns = patterns.display(),
        seen = seen.display()
    );

    let run = tb.sh(&format!(
        "( {scan} ) & scanner=$!; {}; touch {}; wait $scanner",
        deploy_command(&network, &web1.target()),
        tb.path().join("done").display()
    ));

    run.ok();
    assert_eq!(web1.sh("cat /var/lib/secrets/api-token"), TOKEN, "the deploy ran");
    assert_eq!(std::fs::read_to_string(seen).unwrap_or_default(), "", "a secret in some process's argv or environment");
}

#[test]
fn a_deploy_user_with_sudo_writes_the_keys_as_root() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    web1.start_nix_daemon();
    web1.sh("echo 'deploy ALL=(ALL:ALL) NOPASSWD: ALL' >> /etc/sudoers");
    let network = network_with_keys(&tb, TWO_KEYS);
    tb.sh(&format!("nixpipe-eval --network {network} --nixpkgs \"$NIXPKGS\" | nixpipe-copy --to {}", web1.target()))
        .ok();

    tb.sh(&format!(
        "nixpipe-eval --network {network} --nixpkgs \"$NIXPKGS\" --json | nixpipe-activate --on {} --keys --run-key-commands switch",
        web1.target_as("deploy")
    ))
    .ok();

    assert_eq!(owner_and_mode(&web1, "/run/keys/db-password"), "deploy deploy 640");
    assert_eq!(web1.sh("cat /run/keys/db-password"), PASSWORD);
}

#[test]
fn a_failing_key_command_stops_the_host_with_nothing_switched() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let network =
        network_with_keys(&tb, r#"{ vault = { keyCommand = [ "sh" "-c" "echo vault is sealed >&2; exit 3" ]; }; }"#);

    let run = deploy(&tb, &network, &web1.target());

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("key vault: keyCommand sh -c"), "{error}");
    assert!(error.contains("vault is sealed") && error.ends_with("nothing activated"), "{error}");
    assert!(web1.switch_log().is_empty());
    assert_eq!(web1.system_profile(), None);
}

#[test]
fn a_key_written_into_the_configuration_is_refused_naming_it() {
    let tb = Testbed::new();
    let network = network_with_keys(&tb, r#"{ "db-password" = { text = "hunter2"; }; }"#);

    let run = tb.sh(&format!("nixpipe-eval --network {network} --nixpkgs \"$NIXPKGS\" --json"));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.starts_with("nixpipe-eval: web1: key db-password: a key's text lives in the repository"), "{error}");
    assert!(!run.stdout.contains("hunter2") && !run.stderr.contains("hunter2"));
}

#[test]
fn a_key_that_would_escape_its_directory_is_refused_before_any_host_is_touched() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let key = r#"{"name":"../../etc/shadow","keyFile":"/dev/null","destDir":"/run/keys","user":"root","group":"root","permissions":"0600"}"#;

    let run = tb.sh(&format!(
        "echo '{{\"name\":\"web1\",\"path\":\"{system}\",\"keys\":[{key}]}}' | nixpipe-activate --on {} --keys switch",
        web1.target()
    ));

    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("key ../../etc/shadow: a key's name is a file name"), "{}", run.stderr);
    assert!(web1.switch_log().is_empty());
}

#[test]
fn keys_from_plain_records_are_bad_usage_for_a_step_dropped_them() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let network = network_with_keys(&tb, TWO_KEYS);

    // nixpipe-copy --plain writes plain records: the keys are gone.
    let run = tb.sh(&format!(
        "nixpipe-eval --network {network} --nixpkgs \"$NIXPKGS\" --json | nixpipe-copy --plain --to {0} \
         | nixpipe-activate --on {0} --keys switch",
        web1.target()
    ));

    assert_eq!(run.code, 2);
    assert!(run.error_line().ends_with("and no --plain on a step between"), "{}", run.stderr);
    assert!(web1.switch_log().is_empty());
}

#[test]
fn across_a_fleet_each_host_gets_its_own_keys_and_no_other() {
    let tb = Testbed::new();
    let hosts = ["web1", "web2"].map(|name| {
        let host = tb.host(name);
        tb.alias(name, &host, "root");
        host
    });
    network_with_keys(&tb, "{ }");
    let dir = tb.path().display();
    let machine = |name: &str, key: &str, file: &str| {
        format!(
            "{name} = {{ imports = [ \"${{builtins.getEnv \"FIXTURES\"}}/web1/configuration.nix\" ]; \
             deployment.keys.{key}.keyFile = \"{dir}/{file}\"; }};"
        )
    };
    let network = tb.path().join("fleet.nix");
    let fleet =
        format!("{{ {} {} }}\n", machine("web1", "db-password", "password"), machine("web2", "api-token", "token"));
    std::fs::write(&network, fleet).unwrap();

    tb.sh(&format!(
        "nixpipe-eval --network {} --nixpkgs \"$NIXPKGS\" --json | nixpipe-copy --json --jobs 2 \
         | nixpipe-activate --jobs 2 --keys --run-key-commands switch",
        network.display()
    ))
    .ok();

    let keys = |host: &Host| host.sh("ls /run/keys").split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    assert_eq!((keys(&hosts[0]), keys(&hosts[1])), (vec!["db-password".to_owned()], vec!["api-token".to_owned()]));
    assert_eq!(hosts[1].sh("cat /run/keys/api-token"), TOKEN);
}

/// nixpipe-activate --keys with one record for web1 carrying `keys` (JSON
/// objects), its system copied to `host` first.
fn activate_with_keys(tb: &Testbed, host: &Host, keys: &str) -> Run {
    let system = tb.system("web1");
    let t = host.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();
    let record = format!(r#"{{"name":"web1","path":"{system}","keys":[{keys}]}}"#);
    std::fs::write(tb.path().join("record.json"), format!("{record}\n")).unwrap();
    tb.sh(&format!("nixpipe-activate --on {t} --keys switch < record.json"))
}

/// A key of `size` bytes of PASSWORD's letters, in the deployer's directory.
fn key_of_size(tb: &Testbed, size: usize) -> String {
    let path = tb.path().join("big-key");
    std::fs::write(&path, &PASSWORD.repeat(size / PASSWORD.len() + 1).as_bytes()[..size]).unwrap();
    path.display().to_string()
}

fn key_json(file: &str, dest_dir: &str, user: &str) -> String {
    format!(
        r#"{{"name":"app","keyFile":"{file}","destDir":"{dest_dir}","user":"{user}","group":"{user}","permissions":"0600"}}"#
    )
}

/// root's own secret on the host, that no key upload may touch.
const VICTIM: &str = "/root/victim";

fn plant_victim(host: &Host) {
    host.sh(&format!("printf 'root only' > {VICTIM} && chmod 0600 {VICTIM}"));
}

fn assert_victim_untouched(host: &Host) {
    assert_eq!(host.sh(&format!("cat {VICTIM}")), "root only");
    assert_eq!(owner_and_mode(host, VICTIM), "root root 600");
}

#[test]
fn a_dest_dir_that_is_a_symlink_is_refused_and_nothing_is_written() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    web1.sh("ln -s /etc /var/lib/app-secrets");
    let file = key_of_size(&tb, 100);

    let run = activate_with_keys(&tb, &web1, &key_json(&file, "/var/lib/app-secrets", "root"));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(error.contains("/var/lib/app-secrets is a symbolic link; nothing written"), "{error}");
    assert!(!web1.dir().join("etc/app").exists() && web1.sh("ls /etc/app 2>&1 || true").contains("No such file"));
    assert!(web1.switch_log().is_empty(), "nothing activated");
}

#[test]
fn a_root_key_in_a_directory_another_user_can_write_is_refused() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    web1.sh("mkdir -p /home/deploy/keys && chown deploy:deploy /home/deploy/keys && chmod 0700 /home/deploy/keys");
    let file = key_of_size(&tb, 100);

    let run = activate_with_keys(&tb, &web1, &key_json(&file, "/home/deploy/keys", "root"));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("/home/deploy/keys belongs to uid 4242"), "{}", run.stderr);
    assert_eq!(web1.sh("ls -A /home/deploy/keys"), "");
}

#[test]
fn a_world_writable_parent_is_refused() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    web1.sh("mkdir -p /var/lib/shared && chmod 0777 /var/lib/shared");
    let file = key_of_size(&tb, 100);

    let run = activate_with_keys(&tb, &web1, &key_json(&file, "/var/lib/shared/app", "deploy"));

    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("/var/lib/shared can be written by users other than root"), "{}", run.stderr);
    assert!(!web1.sh("ls -A /var/lib/shared").contains("app"));
}

#[test]
fn a_key_user_swapping_the_temporary_file_for_a_link_never_gets_root_to_follow_it() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    plant_victim(&web1);
    web1.sh(
        "mkdir -p /home/deploy/secrets && chown deploy:deploy /home/deploy/secrets && chmod 0700 /home/deploy/secrets",
    );
    // The key's user, racing: every temporary file that appears in its
    // directory is replaced by a link to root's secret, for 30 s.
    web1.sh("(setpriv --reuid=deploy --regid=deploy --clear-groups sh -c 'end=$(($(date +%s) + 30)); \
         while [ $(date +%s) -lt $end ]; do for f in /home/deploy/secrets/.nixpipe-key.*; do \
         [ -f \"$f\" ] && ln -sf /root/victim \"$f\"; done; done' </dev/null >/dev/null 2>&1 &)");
    let file = key_of_size(&tb, 4 << 20);

    for _ in 0..5 {
        let run = activate_with_keys(&tb, &web1, &key_json(&file, "/home/deploy/secrets", "deploy"));
        assert!(run.code == 0 || run.error_line().contains("was replaced while it was written"), "{}", run.stderr);
        assert_victim_untouched(&web1);
    }
    web1.sh("pkill -u deploy || true");
}

#[test]
fn what_a_cut_upload_left_is_removed_and_a_whole_key_arrives() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    // What an upload cut before this change left: a partial secret.
    web1.sh("mkdir -p /run/keys && printf 'db-pass' > /run/keys/.nixpipe-key.Ab12Cd && printf x > /run/keys/.nixpipe-key.4242.0");
    let file = key_of_size(&tb, 1000);

    activate_with_keys(&tb, &web1, &key_json(&file, "/run/keys", "root")).ok();

    assert_eq!(web1.sh("ls -A /run/keys"), "app\n");
    assert_eq!(web1.sh("wc -c < /run/keys/app").trim(), "1000");
}

#[test]
fn a_connection_cut_mid_upload_leaves_no_part_of_the_key() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let t = web1.target();
    tb.sh(&format!("nixpipe-copy --to {t} {system}")).ok();
    let file = key_of_size(&tb, 256 << 20);
    let record = format!(r#"{{"name":"web1","path":"{system}","keys":[{}]}}"#, key_json(&file, "/run/keys", "root"));
    std::fs::write(tb.path().join("record.json"), format!("{record}\n")).unwrap();
    let input = std::fs::File::open(tb.path().join("record.json")).unwrap();

    // The upload runs until part of the key is on the host, then every ssh
    // of the deployer to this host is killed.
    let mut activate = tb.command("nixpipe-activate");
    let mut activate = activate.args(["--on", &t, "--keys", "switch"]).stdin(input).spawn().unwrap();
    let started = std::time::Instant::now();
    while web1.sh("ls -A /run/keys 2>/dev/null || true").is_empty() {
        assert!(started.elapsed().as_secs() < 60, "the upload never started");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::process::Command::new("pkill").args(["-9", "-f", &format!("ssh.*{}", web1.port)]).status().unwrap();
    let status = activate.wait().unwrap();

    assert!(!status.success());
    std::thread::sleep(std::time::Duration::from_secs(2));
    assert_eq!(web1.sh("ls -A /run/keys"), "", "nothing partial is left");
    assert!(web1.switch_log().is_empty());
}

#[test]
fn a_key_command_from_records_runs_only_when_the_user_says_they_are_theirs() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let marker = tb.path().join("ran");
    let key = format!(
        r#"{{"name":"app","keyCommand":["touch","{}"],"destDir":"/run/keys","user":"root","group":"root","permissions":"0600"}}"#,
        marker.display()
    );
    let record = format!(r#"{{"name":"web1","path":"{system}","keys":[{key}]}}"#);
    std::fs::write(tb.path().join("record.json"), format!("{record}\n")).unwrap();

    let run = tb.sh(&format!("nixpipe-activate --on {} --keys switch < record.json", web1.target()));

    assert_eq!(run.code, 2);
    assert!(run.error_line().contains("key app: its keyCommand would run here, as you"), "{}", run.stderr);
    assert!(run.error_line().ends_with("--run-key-commands when these records are your own"), "{}", run.stderr);
    assert!(!marker.exists(), "the command never ran");
}

#[test]
fn key_settings_that_make_no_sense_are_refused_before_any_host_is_touched() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");
    let long = "k".repeat(256);
    let cases = [
        (r#""permissions":"4777""#, "setuid, setgid or sticky"),
        (r#""permissions":"6755""#, "setuid, setgid or sticky"),
        (r#""permissions":"0000""#, "do not let the key's own user read it"),
        (r#""destDir":"/""#, "is not a directory below /"),
        (r#""destDir":"/run/keys\u001b[2J""#, "is not a directory below /"),
        (&*format!(r#""name":"{long}""#), "at most 255 bytes"),
        (r#""keyFile":null,"keyCommand":[]"#, "its keyCommand is empty"),
        (r#""text":"hunter2""#, "a key's text lives in the repository"),
    ];
    for (setting, why) in cases {
        let key = format!(
            r#"{{"name":"app","keyFile":"/dev/null","destDir":"/run/keys","user":"root","group":"root","permissions":"0600",{setting}}}"#
        );
        let record = format!(r#"{{"name":"web1","path":"{system}","keys":[{key}]}}"#);
        std::fs::write(tb.path().join("record.json"), format!("{record}\n")).unwrap();

        let run =
            tb.sh(&format!("nixpipe-activate --on {} --keys --run-key-commands switch < record.json", web1.target()));

        assert_eq!(run.code, 2, "{setting}: {}", run.stderr);
        assert!(run.error_line().contains(why), "{setting}: {}", run.stderr);
        assert!(!run.stderr.contains("hunter2"));
    }
    assert!(web1.switch_log().is_empty());
    assert_eq!(web1.sh("ls -A /run/keys 2>/dev/null || true"), "");
}
