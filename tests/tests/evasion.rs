//! Artifacts that try to talk a scan into "clean": each acts where a naive tracer does not look
//! (a directory fd, a working directory reached with fchdir, a symlink), forges the harness's
//! phase markers, fails at what it tries, acts after the load or only when the model is
//! called, or only outside a sandbox. Each must be found.
//!
//! Payloads are harmless: they read honeytokens and files the job may read, run `true`, or
//! connect to a closed loopback port. Every one gave CLEAN (or an error, or a low finding) on
//! the scanner before these defences.

use std::{process::Command, time::Duration};

use monitor_engine::trace::What;
use monitor_rules::{Finding, Phase, Severity};
use monitor_scan::{ScanReport, Verdict};
use monitor_tests::{loader_python, scan_code, scan_path};

fn rules(report: &ScanReport) -> Vec<&str> {
    report
        .findings
        .iter()
        .map(|f| f.rule.as_str())
        .chain(report.audit_findings.iter().map(|f| f.rule.as_str()))
        .collect()
}

fn finding<'a>(report: &'a ScanReport, rule: &str) -> &'a Finding {
    report
        .findings
        .iter()
        .find(|f| f.rule == rule)
        .unwrap_or_else(|| panic!("no {rule} finding in {:?}: {report:#?}", rules(report)))
}

fn malicious(report: &ScanReport) {
    assert_eq!(
        report.verdict,
        Verdict::Malicious,
        "findings {:?}, errors {:?}",
        rules(report),
        report.errors
    );
}

const TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "current_thread")]
async fn a_honeytoken_opened_relative_to_a_directory_fd_is_a_credential_read() {
    let report = scan_code(
        "import os\n\
         d = os.open(os.path.expanduser('~/.ssh'), os.O_RDONLY | os.O_DIRECTORY)\n\
         f = os.open('id_rsa', os.O_RDONLY, dir_fd=d)\n\
         os.read(f, 100)\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    let read = finding(&report, "cred.read");
    assert_eq!(read.phase, Phase::Load);
    let What::Syscall(sc) = &read.event.what else {
        panic!("{read:?}")
    };
    assert!(
        sc.resolved.iter().any(|p| p == "/home/user/.ssh/id_rsa"),
        "the path as the kernel resolved it is evidence: {sc:?}"
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_honeytoken_opened_after_fchdir_is_a_credential_read() {
    let report = scan_code(
        "import os\n\
         d = os.open(os.path.expanduser('~/.aws'), os.O_RDONLY | os.O_DIRECTORY)\n\
         os.fchdir(d)\n\
         os.close(d)\n\
         open('credentials').read()\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    finding(&report, "cred.read");
}

#[tokio::test(flavor = "current_thread")]
async fn a_honeytoken_read_through_a_symlink_in_tmp_is_a_credential_read() {
    let report = scan_code(
        "import os\n\
         os.symlink(os.path.expanduser('~/.netrc'), '/tmp/notes.txt')\n\
         open('/tmp/notes.txt').read()\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    let read = finding(&report, "cred.read");
    let What::Syscall(sc) = &read.event.what else {
        panic!("{read:?}")
    };
    assert_eq!(
        sc.arg("filename").and_then(|a| a.as_str()),
        Some("/tmp/notes.txt")
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_renamed_honeytoken_is_still_recognised_by_its_inode() {
    // No path of the open names a credential: only the file's identity does.
    let report = scan_code(
        "import os\n\
         home = os.path.expanduser('~')\n\
         os.rename(home + '/.git-credentials', home + '/models/readme.txt')\n\
         os.chdir('/')\n\
         pid = os.fork()\n\
         if pid == 0:\n\
         \x20   open('/proc/%d/cwd/home/user/models/readme.txt' % os.getppid()).read()\n\
         \x20   os._exit(0)\n\
         os.waitpid(pid, 0)\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    finding(&report, "cred.read");
}

#[tokio::test(flavor = "current_thread")]
async fn a_sensitive_file_reached_through_a_symlink_is_judged_by_its_target() {
    // /etc/shadow is not readable by the job's user: the attempt is what is judged.
    let report = scan_code(
        "import os\n\
         os.symlink('/etc', '/tmp/conf')\n\
         try:\n\
         \x20   open('/tmp/conf/shadow').read()\n\
         except OSError:\n\
         \x20   pass\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    finding(&report, "file.sensitive-read");
}

#[tokio::test(flavor = "current_thread")]
async fn a_forged_phase_marker_on_the_control_pipe_is_found() {
    // Declares the load over, then writes a file: a write at load time would be a finding.
    let report = scan_code(
        "import os, sys, time, json\n\
         fd = int(sys.argv[sys.argv.index('--control-fd') + 1])\n\
         marker = json.dumps({'kind': 'phase', 'phase': 'teardown', 't': time.monotonic_ns()})\n\
         os.write(fd, marker.encode() + b'\\n')\n\
         time.sleep(0.05)\n\
         open('/work/dropped.py', 'w').write('print(1)')\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    assert!(
        rules(&report).contains(&"harness.out-of-order"),
        "{:?}",
        rules(&report)
    );
    assert!(
        rules(&report).contains(&"file.write-on-load"),
        "the write is still judged as the load's: {:?}",
        rules(&report)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_failed_exec_in_the_load_phase_is_high_and_says_what_was_tried() {
    let report = scan_code(
        "import os\n\
         try:\n\
         \x20   os.execv('/opt/payload/stage2', ['stage2', '--beacon'])\n\
         except OSError:\n\
         \x20   pass\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    let attempt = finding(&report, "exec.attempt");
    assert_eq!(attempt.severity, Severity::High);
    let What::Syscall(sc) = &attempt.event.what else {
        panic!("{attempt:?}")
    };
    assert_eq!(sc.errno.as_deref(), Some("ENOENT"));
    assert_eq!(
        sc.arg("filename").and_then(|a| a.as_str()),
        Some("/opt/payload/stage2")
    );
    assert_eq!(
        sc.arg("argv").map(ToString::to_string).as_deref(),
        Some(r#"["stage2", "--beacon"]"#)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_thread_that_acts_after_the_load_is_caught_while_the_harness_lingers() {
    // A daemon thread: without a linger, the interpreter's exit would end it unseen.
    let report = scan_code(
        "import threading\n\
         def later():\n\
         \x20   import socket, time\n\
         \x20   time.sleep(0.5)\n\
         \x20   try:\n\
         \x20       socket.create_connection(('127.0.0.1', 9), timeout=1)\n\
         \x20   except OSError:\n\
         \x20       pass\n\
         threading.Thread(target=later, daemon=True).start()\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    let connect = finding(&report, "net.connect");
    assert_eq!(connect.phase, Phase::Linger, "{connect:#?}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_payload_that_acts_only_when_the_model_is_called_is_found_by_default() {
    // A model object made with cloudpickle (its class travels by value): loading it does
    // nothing; calling predict runs a program.
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.pkl");
    let made = Command::new(loader_python())
        .arg("-c")
        .arg(format!(
            "import cloudpickle\n\
             class Model:\n\
             \x20   def predict(self, x):\n\
             \x20       __import__('os').system('true')\n\
             \x20       return x\n\
             open({:?}, 'wb').write(cloudpickle.dumps(Model()))\n",
            model.display().to_string()
        ))
        .status()
        .unwrap();
    assert!(made.success());
    let report = scan_path(&model, |_| {}).await;
    malicious(&report);
    let exec = finding(&report, "exec.program");
    assert_eq!(exec.phase, Phase::Exercise, "{exec:#?}");
    // Not called, it does nothing the kernel sees (what its file says is the static
    // evidence's to judge).
    let skipped = scan_path(&model, |spec| spec.exercise = false).await;
    assert!(
        !rules(&skipped).contains(&"exec.program"),
        "{:?}",
        rules(&skipped)
    );
}

#[tokio::test(flavor = "current_thread")]
async fn a_payload_that_acts_only_outside_a_sandbox_is_not_put_off_by_the_sandbox() {
    // It looks for the tells of a sandbox: an unusual uid, a hostname of one, a nearly empty
    // passwd entry. It finds an ordinary user on an ordinary host.
    let report = scan_code(
        "import os, socket, pwd\n\
         me = pwd.getpwuid(os.getuid())\n\
         ordinary = 1000 <= os.getuid() < 60000 and os.getgid() < 60000\n\
         host = socket.gethostname()\n\
         plain = 'sandbox' not in host and 'bwrap' not in host and host != 'localhost'\n\
         if ordinary and plain and me.pw_dir == os.path.expanduser('~'):\n\
         \x20   os.system('true')\n",
        TIMEOUT,
    )
    .await;
    malicious(&report);
    finding(&report, "exec.program");
}

/// Python that defines `ia32_getpid()`: ia32 `getpid` (number 20) through `int $0x80`, machine
/// code in an executable mapping called through ctypes.
#[cfg(target_arch = "x86_64")]
const IA32_GETPID: &str = "import ctypes, mmap, os\n\
     code = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n\
     # mov eax, 20 (ia32 getpid); int 0x80; ret\n\
     code.write(b'\\xb8\\x14\\x00\\x00\\x00\\xcd\\x80\\xc3')\n\
     ia32_getpid = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(code)))\n";

/// A 32-bit syscall (`int $0x80`) from the 64-bit loader: the kernel's `syscalls:*`
/// tracepoints skip compat calls, so without the sandbox's filter the honeytoken read below
/// would follow a call nobody saw. The payload is `getpid` (ia32 number 20), machine code run
/// through ctypes.
#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "current_thread")]
async fn a_32_bit_syscall_stops_the_job_before_it_runs_and_is_found() {
    let report = scan_code(
        &format!(
            "{IA32_GETPID}\
             ia32_getpid()\n\
             open(os.path.expanduser('~/.ssh/id_rsa')).read()\n"
        ),
        TIMEOUT,
    )
    .await;
    malicious(&report);
    assert!(
        rules(&report).contains(&"sandbox.foreign-abi"),
        "{:?}, errors {:?}",
        rules(&report),
        report.errors
    );
    // Killed at the call: what came after it never ran.
    assert!(
        !rules(&report).contains(&"cred.read"),
        "{:?}",
        rules(&report)
    );
}

/// The same call made by a child of the loader, which waits for it and goes on: the filter
/// kills the child alone, and the loader's own status says nothing. The kernel's exit code of
/// the child (SIGSYS) is the evidence, with the child's pid.
#[cfg(target_arch = "x86_64")]
#[tokio::test(flavor = "current_thread")]
async fn a_32_bit_syscall_in_a_child_of_the_loader_is_found() {
    let report = scan_code(
        &format!(
            "{IA32_GETPID}\
             child = os.fork()\n\
             if child == 0:\n\
             \x20   ia32_getpid()\n\
             \x20   os._exit(0)\n\
             os.waitpid(child, 0)\n"
        ),
        TIMEOUT,
    )
    .await;
    malicious(&report);
    let found = report
        .audit_findings
        .iter()
        .find(|f| f.rule == "sandbox.foreign-abi")
        .unwrap_or_else(|| panic!("{:?}, errors {:?}", rules(&report), report.errors));
    let loader = report.loader.as_ref().expect("a loader ran");
    assert_eq!(loader.exit_code, 0, "the loader itself went on: {loader:?}");
    assert_ne!(found.audit.pid, 0, "the child is named: {:?}", found.audit);
}
