//! nixpipe-copy against testbed hosts: what arrives, what a rerun sends,
//! and what is left after corruption, cuts and refusals.

use nixpipe_tests::proxy::{Link, Proxy};
use nixpipe_tests::{Host, Testbed};

/// A chain of `count` paths of `bytes` random bytes each.
fn oddities(tb: &Testbed) -> String {
    tb.build("-E 'with import <nixpkgs> {}; oddities'")
}

fn local_closure(tb: &Testbed, path: &str) -> Vec<String> {
    let run = tb.sh(&format!("nix-store --query --requisites {path} | sort")).ok();
    run.stdout.lines().map(str::to_owned).collect()
}

fn host_closure(host: &Host, path: &str) -> Vec<String> {
    host.sh(&format!("nix-store --query --requisites {path} | sort")).lines().map(str::to_owned).collect()
}

/// A signing key pair in the deployer's directory, NAME.sec and NAME.pub;
/// returns the public key.
/// Makes the binary cache in `dir` a substituter of `host`, trusting `public`.
fn substitute_from(host: &Host, dir: &std::path::Path, public: &str) {
    let conf = format!("substituters = file://{}\ntrusted-public-keys = {public}\n", dir.display());
    host.sh(&format!("printf '{conf}' >> /etc/nix/nix.conf"));
}

/// ssh to `host` through a port of our own, checking the host's real key.
fn through(tb: &Testbed, host: &Host, proxy: &Proxy) -> String {
    format!("NIX_SSHOPTS=\"{} -o HostKeyAlias=[127.0.0.1]:{}\" ", tb.nix_sshopts(), host.port)
        + &format!("nixpipe-copy --json --to root@127.0.0.1:{}", proxy.port)
}

#[test]
fn copy_makes_the_whole_closure_valid_on_the_target_and_passes_the_record_on() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let system = tb.system("web1");

    let run = tb.sh(&format!("printf 'web1\\t%s\\n' {system} | nixpipe-copy --to {}", web1.target())).ok();

    assert_eq!(run.stdout, format!("web1\t{system}\n"));
    assert_eq!(host_closure(&web1, &system), local_closure(&tb, &system));
    web1.assert_store_sound();
}

#[test]
fn nars_with_every_kind_of_file_arrive_byte_for_byte() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let odd = oddities(&tb);

    tb.sh(&format!("nixpipe-copy --to {} {odd}", web1.target())).ok();

    let here = tb.sh(&format!("nix-store --dump {odd} | sha256sum")).ok().stdout;
    assert_eq!(web1.sh(&format!("nix-store --dump {odd} | sha256sum")), here);
    web1.assert_store_sound();
}

#[test]
fn a_second_copy_finds_everything_there_and_sends_nothing() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let chain = tb.filler(30, 1000, "-warm");
    let t = web1.target();

    let first = tb.sh(&format!("nixpipe-copy --json --to {t} {chain}")).ok().json_lines();
    let second = tb.sh(&format!("nixpipe-copy --json --to {t} {chain}")).ok().json_lines();

    assert_eq!(first[0]["path"], chain.as_str());
    assert_eq!(first[0]["copy"]["closurePaths"], 30);
    assert_eq!(first[0]["copy"]["copiedPaths"], 30);
    assert_eq!(second[0]["copy"]["copiedPaths"], 0);
    assert_eq!(second[0]["copy"]["copiedBytes"], 0);
}

#[test]
fn records_sharing_paths_go_in_one_copy_that_sends_each_path_once() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let chain = tb.filler(10, 100, "-shared");
    let inner = tb.sh(&format!("readlink {chain}/prev")).ok().stdout.trim().to_owned();

    let run = tb.sh(&format!("nixpipe-copy --json --to {} {inner} {chain}", web1.target())).ok();

    let records = run.json_lines();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["copy"]["copiedPaths"], 10);
    assert!(web1.has(&chain));
}

#[test]
fn copy_from_one_host_to_another() {
    let tb = Testbed::new();
    let (build1, web1) = (tb.host("build1"), tb.host("web1"));
    let chain = tb.filler(5, 5000, "-relay");
    tb.sh(&format!("nixpipe-copy --to {} {chain}", build1.target())).ok();
    // Gone from here, so the bytes can only come from build1.
    tb.sh(&format!("nix-store --delete $(nix-store --query --requisites {chain})")).ok();

    tb.sh(&format!("nixpipe-copy --from {} --to {} {chain}", build1.target(), web1.target())).ok();

    assert_eq!(host_closure(&web1, &chain), host_closure(&build1, &chain));
    web1.assert_store_sound();
}

#[test]
fn a_path_missing_from_the_source_is_named_and_nothing_is_copied() {
    let tb = Testbed::new();
    let (build1, web1) = (tb.host("build1"), tb.host("web1"));
    let chain = tb.filler(3, 100, "-missing");

    let run = tb.sh(&format!("nixpipe-copy --from {} --to {} {chain}", build1.target(), web1.target()));

    assert_eq!(run.code, 1);
    assert!(run.error_line().ends_with(&format!("{chain} is not valid in the store on {}", build1.target())));
    assert!(run.stdout.is_empty());
}

#[test]
fn a_corrupt_path_stops_the_copy_naming_it_and_the_target_never_registers_it() {
    let tb = Testbed::new();
    let (build1, web1) = (tb.host("build1"), tb.host("web1"));
    let chain = tb.filler(4, 5000, "-corrupt");
    tb.sh(&format!("nixpipe-copy --to {} {chain}", build1.target())).ok();
    // The same size, other bytes: only the hash can tell.
    build1.sh(&format!("chmod u+w {chain}/data && printf XXXX | dd of={chain}/data bs=1 conv=notrunc 2>/dev/null"));

    let run = tb.sh(&format!("nixpipe-copy --from {} --to {} {chain}", build1.target(), web1.target()));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(
        error.ends_with(&format!(
            "{chain}: the NAR from {} does not have the hash sha256:{} its store records; {} refused it and registered nothing of it",
            build1.target(),
            build1.sh(&format!("nix-store --query --hash {chain} | cut -d: -f2")).trim(),
            web1.target()
        )),
        "{error}"
    );
    assert!(!web1.has(&chain));
    // Everything before it in dependency order arrived whole.
    assert!(web1.has(tb.sh(&format!("readlink {chain}/prev")).ok().stdout.trim()));
    web1.assert_store_sound();
}

#[test]
fn a_path_whose_file_shrank_on_the_source_is_named_with_both_sizes_and_never_registered() {
    let tb = Testbed::new();
    let (build1, web1) = (tb.host("build1"), tb.host("web1"));
    let chain = tb.filler(4, 5000, "-shrunk");
    tb.sh(&format!("nixpipe-copy --to {} {chain}", build1.target())).ok();
    let recorded = build1.sh(&format!("nix-store --query --size {chain}")).trim().to_owned();
    build1.sh(&format!("chmod u+w {chain}/data && truncate --size 1000 {chain}/data"));
    let now = build1.sh(&format!("nix-store --dump {chain} | wc -c")).trim().to_owned();

    let run = tb.sh(&format!("nixpipe-copy --from {} --to {} {chain}", build1.target(), web1.target()));

    assert_eq!(run.code, 1);
    let error = run.error_line();
    assert!(
        error.ends_with(&format!(
            "{chain}: the NAR from {} is {now} bytes, not {recorded} as its store records; stopped before the target registered it",
            build1.target()
        )),
        "{error}"
    );
    assert!(!web1.has(&chain));
    web1.assert_store_sound();
}

#[test]
fn a_connection_cut_at_any_point_leaves_only_valid_paths_and_a_rerun_sends_the_rest() {
    let tb = Testbed::new();
    let chain = tb.filler(20, 100_000, "-cut");
    let closure = local_closure(&tb, &chain);

    // In the handshake, in the queries, and a third, two thirds and most
    // of the way through the NARs (about 2 MB in all).
    for cut in [2_000, 6_000, 700_000, 1_400_000, 1_950_000] {
        let web1 = tb.host("web1");
        let proxy = Proxy::start(web1.port, Link::CutAfter(cut));

        let run = tb.sh(&format!("{} {chain}", through(&tb, &web1, &proxy)));

        assert_eq!(run.code, 1, "cut after {cut} bytes: {}", run.stderr);
        assert!(run.stdout.is_empty());
        web1.assert_store_sound();
        let arrived = closure.iter().filter(|p| web1.has(p)).count();
        // How many arrived depends on how far the target's server got
        // before it died with its session (a daemon stops at once when
        // its input ends): what it had not registered is gone, whole.
        assert!(arrived < closure.len(), "cut after {cut}: {arrived} arrived");
        let rerun = tb.sh(&format!("nixpipe-copy --json --to {} {chain}", web1.target())).ok().json_lines();
        assert_eq!(rerun[0]["copy"]["copiedPaths"], closure.len() - arrived, "cut after {cut} bytes");
        assert_eq!(host_closure(&web1, &chain), closure);
        web1.assert_store_sound();
    }
}

#[test]
fn a_binary_cache_written_by_copy_is_a_substituter_nix_accepts() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let odd = oddities(&tb);
    let chain = tb.filler(5, 1000, "-cache");
    let public = tb.new_key("cache");
    let cache = tb.path().join("cache");

    let run = tb.sh(&format!("nixpipe-copy --to file://{} --sign-key cache.sec {odd} {chain}", cache.display())).ok();

    assert_eq!(run.stdout_lines(), [odd.as_str(), chain.as_str()]);
    substitute_from(&web1, &cache, &public);
    web1.sh(&format!("nix-store --realise {odd} {chain}"));
    assert_eq!(host_closure(&web1, &chain), local_closure(&tb, &chain));
    web1.assert_store_sound();
}

#[test]
fn substitute_on_destination_lets_the_target_fetch_from_its_own_cache() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let chain = tb.filler(5, 1000, "-subst");
    let public = tb.new_key("cache");
    let cache = tb.path().join("cache");
    tb.sh(&format!("nixpipe-copy --to file://{} --sign-key cache.sec {chain}", cache.display())).ok();
    substitute_from(&web1, &cache, &public);

    let run = tb.sh(&format!("nixpipe-copy -s --json --to {} {chain}", web1.target())).ok();

    assert_eq!(run.json_lines()[0]["copy"]["copiedPaths"], 0);
    assert!(web1.has(&chain));
}

#[test]
fn unsigned_paths_to_an_untrusted_user_are_refused_with_the_ways_out() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let chain = tb.filler(2, 100, "-untrusted");
    let public = tb.new_key("deploy");
    web1.sh(&format!("printf 'trusted-public-keys = {public}\\n' >> /etc/nix/nix.conf"));
    web1.start_nix_daemon();
    let t = web1.target_as("deploy");

    let refused = tb.sh(&format!("nixpipe-copy --to {t} {chain}"));
    let signed = tb.sh(&format!("nixpipe-copy --to {t} --sign-key deploy.sec {chain}"));

    assert_eq!(refused.code, 1);
    assert!(
        refused
            .error_line()
            .contains("does not trust unsigned paths from deploy: copy as root, add deploy to trusted-users"),
        "{}",
        refused.stderr
    );
    assert_eq!(signed.code, 0, "{}", signed.stderr);
    assert!(web1.has(&chain));
}

#[test]
fn compress_zstd_streams_through_the_targets_zstd() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let odd = oddities(&tb);
    let chain = tb.filler(10, 10_000, "-zstd");

    let run = tb.sh(&format!("nixpipe-copy --compress zstd --json --to {} {odd} {chain}", web1.target())).ok();

    assert_eq!(run.json_lines()[1]["copy"]["copiedPaths"], 11);
    assert_eq!(host_closure(&web1, &chain), local_closure(&tb, &chain));
    assert!(web1.has(&odd));
    web1.assert_store_sound();
}

#[test]
fn dry_run_lists_what_would_be_sent_and_sends_nothing() {
    let tb = Testbed::new();
    let web1 = tb.host("web1");
    let chain = tb.filler(3, 100, "-dry");

    let run = tb.sh(&format!("nixpipe-copy --dry-run --to {} {chain}", web1.target())).ok();

    assert!(run.stdout.is_empty());
    assert_eq!(run.stderr.matches("would copy /nix/store/").count(), 3, "{}", run.stderr);
    assert!(!web1.has(&chain));
}

#[test]
fn every_file_of_a_binary_cache_is_readable_by_the_user_that_serves_it() {
    let tb = Testbed::new();
    // Its deploy user reads the cache, as a web server's user would.
    let web1 = tb.host("web1");
    let chain = tb.filler(2, 100, "-readable");
    let cache = tb.path().join("cache");
    tb.sh(&format!("nixpipe-copy --to file://{} {chain}", cache.display())).ok();
    std::fs::set_permissions(tb.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    let unreadable = web1.sh(&format!(
        "find {} -type f | while read -r f; do setpriv --reuid=deploy --regid=deploy --clear-groups cat \"$f\" >/dev/null 2>&1 || echo \"$f\"; done",
        cache.display()
    ));

    assert_eq!(unreadable, "", "unreadable by another user");
    assert!(web1.sh(&format!("ls {}/nar", cache.display())).lines().count() >= 2);
}
