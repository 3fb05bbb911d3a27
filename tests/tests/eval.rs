//! nixpipe-eval on flakes: machines by name or all of them, evaluated in one
//! Nix process and built in one more, a broken machine not stopping the rest.

use nixpipe_tests::Testbed;

#[test]
fn flake_machines_are_evaluated_in_one_nix_process_and_built_in_one_call() {
    let tb = Testbed::new();
    let fleet = tb.flake("fleet");
    let nix_calls = tb.count_calls("nix");
    let build_calls = tb.count_calls("nix-build");

    let run = tb.sh(&format!("nixpipe-eval {0}#web1 {0}#web2", fleet.display())).ok();

    let lines = run.stdout_lines();
    let names: Vec<&str> = lines.iter().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(names, ["web1", "web2"]);
    let web1 = lines[0].split('\t').nth(1).unwrap();
    assert_eq!(web1, tb.system("web1"), "the same configuration gives the same system as -f does");
    assert!(std::path::Path::new(web1).exists(), "built");
    let nix_calls = std::fs::read_to_string(nix_calls).unwrap();
    assert_eq!(nix_calls.lines().count(), 1, "{nix_calls}");
    assert_eq!(std::fs::read_to_string(build_calls).unwrap().lines().count(), 2, "tb.system's and ours");
}

#[test]
fn all_prints_every_machine_that_evaluates_and_names_the_one_that_does_not() {
    let tb = Testbed::new();
    let fleet = tb.flake("fleet");

    let run = tb.sh(&format!("cd {} && nixpipe-eval --all --json", fleet.display()));

    assert_eq!(run.code, 1);
    let names: Vec<_> = run.json_lines().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(names, ["web1", "web2"]);
    assert_eq!(run.error_line(), "nixpipe-eval: broken: evaluation failed (Nix's message is above)");
    assert!(run.stderr.contains("no-such-package"), "Nix's message is shown: {}", run.stderr);
}

#[test]
fn a_directory_without_a_flake_is_bad_usage() {
    let tb = Testbed::new();

    let run = tb.sh("nixpipe-eval .#web1");

    assert_eq!(run.code, 2);
    assert!(run.error_line().ends_with(": no flake.nix there"), "{}", run.stderr);
}

#[test]
fn a_flake_without_nixos_configurations_says_so() {
    let tb = Testbed::new();
    std::fs::create_dir_all(tb.path().join("empty")).unwrap();
    std::fs::write(tb.path().join("empty/flake.nix"), "{ outputs = { self }: { }; }\n").unwrap();

    let run = tb.sh("nixpipe-eval --all ./empty#");

    assert_eq!(run.code, 1);
    assert!(run.error_line().ends_with("/empty: no nixosConfigurations (Nix's message is above)"), "{}", run.stderr);
    assert!(run.stdout.is_empty());
}

#[test]
fn a_network_file_that_is_not_a_set_of_machines_says_so() {
    let tb = Testbed::new();
    std::fs::write(tb.path().join("network.nix"), "42\n").unwrap();

    let run = tb.sh(r#"nixpipe-eval --network network.nix --nixpkgs "$NIXPKGS""#);

    assert_eq!(run.code, 1);
    assert!(
        run.error_line().ends_with("network.nix: not a network of machines (Nix's message is above)"),
        "{}",
        run.stderr
    );
}

#[test]
fn variants_pick_the_vm_the_vm_runner_or_any_attribute() {
    let tb = Testbed::new();
    let fleet = tb.flake("fleet").display().to_string();
    let eval = |flags: &str| tb.sh(&format!("nixpipe-eval {flags} {fleet}#web1")).ok().stdout.trim().to_owned();

    let (system, vm, runner) = (eval(""), eval("--vm"), eval("--vm-runner"));

    assert_eq!(eval("--attr system.build.toplevel"), system);
    assert_ne!(vm, system, "the VM variant is a system of its own");
    let runner = runner.split('\t').nth(1).unwrap().to_owned();
    assert!(std::path::Path::new(&format!("{runner}/bin/run-web1-vm")).exists(), "{runner}");
    assert_eq!(std::fs::read_link(format!("{runner}/system")).unwrap().to_str(), vm.split('\t').nth(1));
}

#[test]
fn microvm_runner_gives_the_runner_microvm_nix_declares() {
    let tb = Testbed::new();

    let run = tb.sh(r#"nixpipe-eval --microvm-runner -f "$FIXTURES/web1/configuration.nix" --nixpkgs "$NIXPKGS""#).ok();

    let (name, runner) = run.stdout.trim().split_once('\t').unwrap();
    assert_eq!(name, "web1");
    assert!(runner.ends_with("-microvm-qemu-web1"), "{runner}");
    assert!(std::path::Path::new(&format!("{runner}/bin/microvm-run")).exists());
    let system = std::fs::read_link(format!("{runner}/share/microvm/system")).unwrap();
    assert_eq!(system.to_str().unwrap(), tb.system("web1"));
}

#[test]
fn drv_prints_derivations_and_builds_nothing() {
    let tb = Testbed::new();
    let fleet = tb.flake("fleet");
    let builds = tb.count_calls("nix-build");

    let run = tb.sh(&format!("nixpipe-eval --drv {}#web2", fleet.display())).ok();

    let [line] = run.stdout_lines()[..] else { panic!("one record: {}", run.stdout) };
    let (name, drv) = line.split_once('\t').unwrap();
    assert_eq!(name, "web2");
    assert!(drv.ends_with(".drv") && std::path::Path::new(drv).exists(), "{drv}");
    assert!(!builds.exists(), "nix-build was not called");
}

#[test]
fn a_network_file_gives_every_machine_with_its_target_host_and_system_in_one_evaluation() {
    let tb = Testbed::new();
    let instantiations = tb.count_calls("nix-instantiate");

    // --drv: the pi is an aarch64-linux machine, not built here.
    let run = tb.sh(r#"nixpipe-eval --network "$FIXTURES/network.nix" --nixpkgs "$NIXPKGS" --drv --json"#).ok();

    let records = run.json_lines();
    let field = |r: &serde_json::Value, f: &str| r[f].as_str().unwrap_or_default().to_owned();
    let names: Vec<_> = records.iter().map(|r| field(r, "name")).collect();
    assert_eq!(names, ["db1", "pi", "web1"]);
    assert!(field(&records[0], "drv").ends_with("-nixos-system-db1-net.drv"), "{}", records[0]);
    assert_eq!(field(&records[0], "targetHost"), "10.0.0.5");
    assert_eq!(field(&records[1], "targetHost"), "pi.local");
    assert_eq!(field(&records[1], "system"), "aarch64-linux");
    assert_eq!(field(&records[2], "system"), "x86_64-linux");
    assert!(records[2].get("targetHost").is_none());
    assert_eq!(std::fs::read_to_string(instantiations).unwrap().lines().count(), 1);
}

#[test]
fn a_network_files_tags_travel_in_the_records_and_tag_keeps_the_machines_carrying_one() {
    let tb = Testbed::new();
    let eval = r#"nixpipe-eval --network "$FIXTURES/network.nix" --nixpkgs "$NIXPKGS" --drv --json"#;

    let all = tb.sh(eval).ok();
    let tagged = tb.sh(&format!("{eval} --tag db --tag edge")).ok();

    let tags: Vec<String> = all.json_lines().iter().map(|r| format!("{} {}", r["name"], r["tags"])).collect();
    assert_eq!(tags, [r#""db1" ["db"]"#, r#""pi" ["edge","manual"]"#, r#""web1" []"#]);
    let names: Vec<String> = tagged.json_lines().iter().map(|r| r["name"].to_string()).collect();
    assert_eq!(names, [r#""db1""#, r#""pi""#]);
}

#[test]
fn a_flakes_machines_are_chosen_by_tag_and_only_those_are_built() {
    let tb = Testbed::new();
    let fleet = tb.flake("fleet");
    let builds = tb.count_calls("nix-build");

    let run = tb.sh(&format!("nixpipe-eval {0}#web1 {0}#web2 --tag canary", fleet.display())).ok();

    let names: Vec<String> = run.stdout_lines().iter().map(|l| l.split('\t').next().unwrap().to_owned()).collect();
    assert_eq!(names, ["web2"]);
    let built = std::fs::read_to_string(builds).unwrap();
    assert!(built.contains("web2") && !built.contains("web1"), "{built}");
}

#[test]
fn machines_for_explicit_deploys_only_are_left_out_with_grep_v() {
    let tb = Testbed::new();

    // clan's requireExplicitUpdate, the Unix way: a tag, and grep -v.
    let run = tb
        .sh(r#"nixpipe-eval --network "$FIXTURES/network.nix" --nixpkgs "$NIXPKGS" --drv --json | grep -v '"manual"'"#)
        .ok();

    let names: Vec<String> = run.json_lines().iter().map(|r| r["name"].to_string()).collect();
    assert_eq!(names, [r#""db1""#, r#""web1""#]);
}

#[test]
fn a_tag_no_machine_carries_is_one_line_and_builds_nothing() {
    let tb = Testbed::new();
    let fleet = tb.flake("fleet");

    let run = tb.sh(&format!("nixpipe-eval {0}#web1 {0}#web2 --tag cnary", fleet.display()));

    assert_eq!(run.code, 1);
    assert_eq!(run.error_line(), "nixpipe-eval: no machine carries the tag cnary");
    assert!(run.stdout.is_empty());
}

#[test]
fn nixpkgs_comes_from_nix_path_or_i_as_for_nix_build() {
    let tb = Testbed::new();
    let config = r#""$FIXTURES/web1/configuration.nix""#;

    let from_nix_path = tb.sh(&format!(r#"NIX_PATH="nixpkgs=$NIXPKGS" nixpipe-eval -f {config}"#)).ok();
    let from_i = tb.sh(&format!(r#"nixpipe-eval -I "nixpkgs=$NIXPKGS" -f {config}"#)).ok();

    let expected = format!("web1\t{}\n", tb.system("web1"));
    assert_eq!(from_nix_path.stdout, expected);
    assert_eq!(from_i.stdout, expected);
}

#[test]
fn build_on_sends_the_derivations_and_builds_on_the_target_only() {
    let tb = Testbed::new();
    let builder = tb.host("builder");
    // A system no other test has built on this machine.
    let unique = tb.path().file_name().unwrap().to_str().unwrap().replace('.', "-");
    let config = tb.path().join("configuration.nix");
    let module = format!(
        r#"{{ imports = [ {}/web1/configuration.nix ]; system.nixos.version = "{unique}"; }}"#,
        nixpipe_tests::fixtures().display()
    );
    std::fs::write(&config, module).unwrap();

    let run = tb
        .sh(&format!(r#"nixpipe-eval --build-on {} -f {} --nixpkgs "$NIXPKGS""#, builder.target(), config.display()))
        .ok();

    let (name, toplevel) = run.stdout.trim().split_once('\t').unwrap();
    assert_eq!(name, "web1");
    assert!(builder.has(toplevel), "built on the builder");
    assert_ne!(tb.sh(&format!("nix-store --check-validity {toplevel}")).code, 0, "not built here");
    builder.assert_store_sound();
}

#[test]
fn system_evaluates_for_another_architecture() {
    let tb = Testbed::new();

    let run = tb.sh(r#"nixpipe-eval --system aarch64-linux --drv --json -f "$FIXTURES/web1/configuration.nix" --nixpkgs "$NIXPKGS""#);

    let [record] = &run.ok().json_lines()[..] else { panic!("one record") };
    assert_eq!(record["system"], "aarch64-linux");
    assert!(record["path"].as_str().unwrap().ends_with(".drv"));
}

#[test]
fn nixpkgs_pinned_by_url_and_sha256_is_fetched_and_checked() {
    let tb = Testbed::new();
    tb.sh(r#"tar -czf nixpkgs.tar.gz -C "$NIXPKGS/.." nixpkgs"#).ok();
    let url = format!("file://{}/nixpkgs.tar.gz", tb.path().display());
    let sha256 = tb.sh(&format!("nix-prefetch-url --unpack {url} 2>/dev/null")).ok().stdout.trim().to_owned();
    let eval = |hash: &str| {
        tb.sh(&format!(
            r#"nixpipe-eval -f "$FIXTURES/web1/configuration.nix" --nixpkgs-url {url} --nixpkgs-sha256 {hash}"#
        ))
    };

    let pinned = eval(&sha256).ok();
    let wrong = eval("0000000000000000000000000000000000000000000000000000");

    assert_eq!(pinned.stdout.trim(), format!("web1\t{}", tb.system("web1")));
    assert_eq!(wrong.code, 1);
    assert!(
        wrong.error_line().starts_with(&format!("nixpipe-eval: cannot fetch nixpkgs from {url}: ")),
        "{}",
        wrong.stderr
    );
}

#[test]
fn a_build_that_fails_on_the_builder_is_one_line_under_nixs_log_and_no_record() {
    let tb = Testbed::new();
    let builder = tb.host("builder");
    let config = tb.path().join("configuration.nix");
    let module = format!(
        r#"{{ pkgs, ... }}: {{
             imports = [ {}/web1/configuration.nix ];
             environment.systemPackages = [ (pkgs.runCommand "broken-{}" {{ }} "echo the build broke >&2; exit 1") ];
           }}"#,
        nixpipe_tests::fixtures().display(),
        tb.path().file_name().unwrap().to_str().unwrap().replace('.', "-")
    );
    std::fs::write(&config, module).unwrap();

    let run =
        tb.sh(&format!(r#"nixpipe-eval --build-on {} -f {} --nixpkgs "$NIXPKGS""#, builder.target(), config.display()));

    assert_eq!(run.code, 1);
    assert_eq!(run.stdout, "");
    assert_eq!(
        run.error_line(),
        format!("nixpipe-eval: building on {} failed (Nix's message is above)", builder.target())
    );
    assert!(run.stderr.contains("the build broke"), "Nix's own log is shown");
}

#[test]
fn show_trace_reaches_nix_on_a_failing_evaluation() {
    let tb = Testbed::new();
    std::fs::write(tb.path().join("bad.nix"), "{ ... }: { networking.hostName = (x: x.missing) { }; }\n").unwrap();
    let eval = |flags: &str| tb.sh(&format!("nixpipe-eval -f bad.nix --nixpkgs \"$NIXPKGS\" {flags}"));

    let (plain, traced) = (eval(""), eval("--show-trace"));

    assert_eq!((plain.code, traced.code), (1, 1));
    assert!(plain.stderr.contains("use '--show-trace'"), "{}", plain.stderr);
    assert!(!traced.stderr.contains("use '--show-trace'") && traced.stderr.contains("while"), "{}", traced.stderr);
}

#[test]
fn an_option_changes_a_setting_that_nix_then_enforces() {
    let tb = Testbed::new();
    let config = format!("{}/web1/configuration.nix", nixpipe_tests::fixtures().display());

    let run = tb.sh(&format!("nixpipe-eval -f {config} --nixpkgs \"$NIXPKGS\" --option restrict-eval true"));

    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("is forbidden in restricted mode"), "{}", run.stderr);
    tb.sh(&format!("nixpipe-eval -f {config} --nixpkgs \"$NIXPKGS\" --option restrict-eval false")).ok();
}

#[test]
fn keep_going_builds_the_other_machines_when_one_of_three_fails_to_build() {
    let tb = Testbed::new();
    let network = tb.path().join("net.nix");
    let broken = "{ pkgs, ... }: { environment.systemPackages = [ (pkgs.runCommand \"broken\" { } \"exit 1\") ]; }";
    std::fs::write(&network, format!("{{ web1 = {{ }}; web2 = {broken}; web3 = {{ }}; }}\n")).unwrap();
    let eval =
        |flags: &str| tb.sh(&format!("nixpipe-eval --network {} --nixpkgs \"$NIXPKGS\" {flags}", network.display()));

    let stopped = eval("");
    assert_eq!(stopped.code, 1);
    assert!(stopped.stdout.is_empty(), "without --keep-going nothing: {}", stopped.stdout);

    let run = eval("--keep-going");
    assert_eq!(run.code, 1);
    let names: Vec<&str> = run.stdout_lines().iter().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(names, ["web1", "web3"]);
    assert!(run.error_line().starts_with("nixpipe-eval: web2: its build failed"), "{}", run.stderr);
}

#[test]
fn override_input_gives_a_flake_another_nixpkgs() {
    let tb = Testbed::new();
    let fleet = tb.flake("fleet");
    let other = tb.path().join("other-nixpkgs");
    tb.sh(&format!(
        "cp -r \"$NIXPKGS\" {0} && sed -i 's/24.05.20240101.stand-in/25.11.overridden/' {0}/nixos/modules/base.nix",
        other.display()
    ))
    .ok();

    let run = tb
        .sh(&format!(
            "nixpipe-eval {}#web2 --override-input nixpkgs path:{} --no-write-lock-file",
            fleet.display(),
            other.display()
        ))
        .ok();

    assert!(run.stdout.contains("-nixos-system-web2-25.11.overridden"), "{}", run.stdout);
}
