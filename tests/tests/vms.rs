//! Real VMs under qemu (TCG here): a network of them started together
//! from nixpipe-eval's runners, a running VM updated in place, and the VMs
//! that do not come up. Every guest boots Debian's kernel, the testbed's
//! initrd, and the run's target release as its userland (sshd, Nix).

use nixpipe_tests::{http, Testbed};
use serde_json::Value;

/// A network of two machines whose VMs serve their own page, root's key
/// the deployer's; the file's path.
fn network(tb: &Testbed, db1_page: &str) -> String {
    let path = tb.path().join("net.nix");
    let text = format!(
        "{{\n  defaults = {{ users.users.root.openssh.authorizedKeys.keys = [ \"{key}\" ]; }};\n  web1 = {{ testbed.webPage = \"web1's page\"; }};\n  db1 = {{ testbed.webPage = \"{db1_page}\"; }};\n}}\n",
        key = tb.public_key()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn names(records: &[Value]) -> Vec<&str> {
    records.iter().map(|r| r["name"].as_str().unwrap()).collect()
}

fn qemus(tb: &Testbed) -> usize {
    let run = tb.sh("for p in run/nixpipe-vms/*/pid; do [ -e \"$p\" ] && kill -0 \"$(cat \"$p\")\" 2>/dev/null && echo up; done; true");
    run.stdout.lines().count()
}

#[test]
fn a_network_of_vms_starts_together_and_each_reaches_the_others_by_name() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let net = network(&tb, "db1's page");
    let started =
        tb.sh(&format!("nixpipe-eval --network {net} --vm-runner --nixpkgs \"$NIXPKGS\" | nixpipe-vm start")).ok();
    let records = started.json_lines();
    assert_eq!(names(&records), ["db1", "web1"]);
    assert!(started.stderr.contains("db1 | up at root@127.0.0.1:"), "{}", started.stderr);

    // web1 reaches db1 by its name, on the network's private link.
    let web1 = &records[1];
    let page = tb.in_vm(web1, &nixpipe_tests::vm::fetch("http://db1/")).ok();
    assert_eq!(page.stdout, "db1's page");
    let hosts = tb.in_vm(web1, "cat /etc/hosts").ok();
    assert!(hosts.stdout.contains("192.168.1.1 db1") && hosts.stdout.contains("192.168.1.2 web1"), "{}", hosts.stdout);

    // Both run and are listed; one stopped, then the other.
    assert_eq!(names(&tb.sh("nixpipe-vm list").ok().json_lines()), ["db1", "web1"]);
    tb.sh("nixpipe-vm stop db1").ok();
    assert_eq!(names(&tb.sh("nixpipe-vm list").ok().json_lines()), ["web1"]);
    assert_eq!(qemus(&tb), 1);
    tb.sh("nixpipe-vm stop").ok();
    assert!(tb.sh("nixpipe-vm list").ok().stdout.is_empty());
    assert_eq!(qemus(&tb), 0);
}

#[test]
fn a_network_of_running_vms_is_updated_in_place_by_name() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let net = network(&tb, "db1, first");
    tb.sh(&format!("nixpipe-eval --network {net} --vm-runner --nixpkgs \"$NIXPKGS\" | nixpipe-vm start")).ok();
    let net = network(&tb, "db1, second");
    let deploy = format!(
        "nixpipe-eval --network {net} --vm --json --nixpkgs \"$NIXPKGS\" | nixpipe-vm target | nixpipe-copy --json | nixpipe-activate test"
    );
    let run = tb.sh(&deploy).ok();
    assert!(run.stderr.contains("db1 | restarting the following units: testbed-web.service"), "{}", run.stderr);
    let web1 = tb.sh("nixpipe-vm list").ok().json_lines().remove(1);
    let page = tb.in_vm(&web1, &nixpipe_tests::vm::fetch("http://db1/")).ok();
    assert_eq!(page.stdout, "db1, second");
}

#[test]
fn a_running_vm_is_updated_in_place_and_again_its_service_changing_as_seen_from_outside() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let web_port = web.local_addr().unwrap().port();
    drop(web);
    let first = tb.vm_config("first", "testbed.webPage = \"first\";");
    let started = tb
        .sh(&format!(
            "nixpipe-eval --vm-runner -f {} --nixpkgs \"$NIXPKGS\" | QEMU_NET_OPTS=hostfwd=tcp:127.0.0.1:{web_port}-:80 nixpipe-vm start",
            first.display()
        ))
        .ok();
    let vm = started.json_lines().remove(0);
    let target = vm["targetHost"].as_str().unwrap().to_owned();
    http::wait_for_page(web_port, "/", "first");

    for page in ["second", "third"] {
        let config = tb.vm_config(page, &format!("testbed.webPage = \"{page}\";"));
        let run = tb
            .sh(&format!(
                "nixpipe-eval --vm -f {} --nixpkgs \"$NIXPKGS\" | nixpipe-copy --to {target} | nixpipe-activate --on {target} test",
                config.display()
            ))
            .ok();
        let toplevel = run.stdout.split_whitespace().last().unwrap().to_owned();
        http::wait_for_page(web_port, "/", page);
        // The new system is in the VM's own store (its writable overlay
        // over the host's), registered in the VM's Nix database.
        let name = toplevel.strip_prefix("/nix/store/").unwrap();
        let inside = tb.in_vm(&vm, &format!("ls /nix/.rw-store/store/{name} >/dev/null && nix-store --check-validity {toplevel} && readlink /run/current-system")).ok();
        assert_eq!(inside.stdout.trim(), toplevel);
    }
}

#[test]
fn a_runner_that_never_boots_is_named_with_its_console_and_nothing_stays_running() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let config = tb.vm_config("web1", "");
    // Its initrd finds no stage 2: the kernel panics and qemu exits.
    let run = tb.sh(&format!(
        "nixpipe-eval --vm-runner -f {} --nixpkgs \"$NIXPKGS\" | QEMU_KERNEL_PARAMS=init=/nix/store/nothing nixpipe-vm start",
        config.display()
    ));
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("web1's runner exited"), "{}", run.stderr);
    assert!(run.error_line().contains("no stage 2 at /nix/store/nothing"), "{}", run.stderr);
    assert!(tb.sh("nixpipe-vm list").ok().stdout.is_empty());
    assert_eq!(qemus(&tb), 0);
}

#[test]
fn a_vm_that_does_not_answer_in_time_is_stopped_with_its_console() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let config = tb.vm_config("web1", "");
    let run = tb.sh(&format!(
        "nixpipe-eval --vm-runner -f {} --nixpkgs \"$NIXPKGS\" | nixpipe-vm start --boot-timeout 1",
        config.display()
    ));
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("web1's ssh did not answer within 1 s"), "{}", run.stderr);
    assert_eq!(qemus(&tb), 0);
}

#[test]
fn qemu_missing_is_said_with_the_runners_own_words() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let config = tb.vm_config("web1", "");
    let runner = tb.sh(&format!("nixpipe-eval --vm-runner -f {} --nixpkgs \"$NIXPKGS\"", config.display())).ok();
    // Only nixpipe on PATH: the runner finds no qemu-system-x86_64.
    let path = runner.stdout.trim().split_once('\t').unwrap().1;
    let run = tb.sh(&format!("PATH={} nixpipe-vm start {path}", nixpipe_tests::bin_dir().display()));
    assert_eq!(run.code, 1);
    assert!(run.error_line().contains("web1's runner exited"), "{}", run.stderr);
    assert!(run.error_line().contains("qemu-system-x86_64: not found"), "{}", run.stderr);
}

#[test]
fn a_taken_port_is_refused_before_any_vm_starts() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = tb.vm_config("web1", "");
    let run = tb.sh(&format!(
        "nixpipe-eval --vm-runner -f {} --nixpkgs \"$NIXPKGS\" | nixpipe-vm start --ssh-port {port}",
        config.display()
    ));
    assert_eq!(run.code, 1);
    assert!(run.error_line().starts_with(&format!("nixpipe-vm: port {port} of 127.0.0.1 is taken")), "{}", run.stderr);
    assert_eq!(qemus(&tb), 0);
}

#[test]
fn a_record_that_is_no_vm_runner_is_bad_input() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let system = tb.system("web1");
    let run = tb.sh(&format!("nixpipe-vm start {system}"));
    assert_eq!(run.code, 2);
    assert_eq!(
        run.error_line(),
        format!(
            "nixpipe-vm: {system} is not a VM runner (no bin/run-NAME-vm in it: nixpipe-eval --vm-runner gives one)"
        )
    );
    let run = tb.sh("nixpipe-vm stop nothing");
    assert_eq!((run.code, run.error_line()), (1, "nixpipe-vm: no VM called nothing runs"));
}

#[test]
fn a_vm_killed_under_a_deploy_fails_the_deploy_naming_it() {
    let tb = Testbed::new();
    let _vms = tb.vms();
    let first = tb.vm_config("first", "");
    let started =
        tb.sh(&format!("nixpipe-eval --vm-runner -f {} --nixpkgs \"$NIXPKGS\" | nixpipe-vm start", first.display()));
    let target = started.ok().json_lines()[0]["targetHost"].as_str().unwrap().to_owned();
    let slow = tb.vm_config("slow", "testbed.switchSleep = 60;");
    // The VM is stopped (its qemu killed) once its switch has begun.
    let run = tb.sh(&format!(
        "nixpipe-eval --vm -f {} --nixpkgs \"$NIXPKGS\" | nixpipe-copy --to {target} \
           | nixpipe-activate --on {target} --reconnect-timeout 5 test 2>deploy.err & deploy=$!
         until grep -q 'switch-to-configuration test' deploy.err; do sleep 0.2; done
         nixpipe-vm stop web1
         wait $deploy; code=$?; cat deploy.err >&2; exit $code",
        slow.display()
    ));
    assert_eq!(run.code, 1);
    assert!(
        run.error_line().starts_with(&format!(
            "nixpipe-activate: web1: lost track of the activation on {target}: no connection to {target} for 5 s"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(run.stderr.matches("lost the connection").count(), 1, "said once: {}", run.stderr);
    assert_eq!(qemus(&tb), 0);
}
