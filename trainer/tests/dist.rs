//! Data-parallel training over c10d with Gloo on loopback (issue #11): several ranks train as one
//! process on the same global batch, validation counts every image once whatever the world size, a
//! distributed run resumes exactly, and faults (a dead rank, Ctrl-C, a rendezvous that never completes,
//! bad flags) end in clear errors, never a hang.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use imgtrain::checkpoint::Checkpoint;

use crate::train::{assert_same_state, dataset, imgtrain, runs, stderr, stdout};

/// The flags of the small resnet18 runs here: the batch divides among 2 and 3 ranks.
pub(crate) const RESNET: &[&str] = &[
    "--arch",
    "resnet18",
    "-b",
    "6",
    "--crop-size",
    "32",
    "--val-resize",
    "36",
    "-j",
    "1",
    "--seed",
    "7",
    "-p",
    "1",
];

/// `--multiprocessing-distributed` with `n` Gloo processes.
pub(crate) fn ranks(n: usize) -> Vec<String> {
    vec![
        "--multiprocessing-distributed".into(),
        "--nproc-per-node".into(),
        n.to_string(),
    ]
}

pub(crate) fn run(args: &[&str], extra: &[String]) -> Output {
    let out = imgtrain()
        .arg(dataset())
        .args(args)
        .args(extra)
        // One libtorch thread per rank: two ranks on two cores.
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "imgtrain {args:?} {extra:?} failed:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn out_dir(dir: &Path) -> Vec<String> {
    vec!["--output_dir".into(), dir.display().to_string()]
}

#[test]
fn two_ranks_train_as_one_process_on_the_global_batch() {
    // No BatchNorm and no dropout: each sample's gradient is then the same whichever rank computes it,
    // and the mean over the global batch of 8 is the mean of the two ranks' means over 4. A small
    // learning rate keeps ReLUs off their kinks (see preempt.rs).
    let alexnet = [
        "--arch",
        "alexnet",
        "--dropout",
        "0",
        "-b",
        "8",
        "--crop-size",
        "63",
        "--val-resize",
        "70",
        "-j",
        "1",
        "--seed",
        "3",
        "--lr",
        "0.001",
        "--epochs",
        "1",
        "--limit-val",
        "4",
    ];
    let one = tempfile::tempdir().unwrap();
    let two = tempfile::tempdir().unwrap();
    run(&alexnet, &out_dir(one.path()));
    let mut extra = out_dir(two.path());
    extra.extend(ranks(2));
    // Parameters compared over the ranks after every step, bit for bit.
    extra.extend(["--check-replicas".into(), "1".into()]);
    let out = run(&alexnet, &extra);
    let o = stdout(&out);
    assert!(
        o.contains("=> rank 0 of 2: joining the gloo process group"),
        "{o}"
    );
    // Only rank 0 prints: each of the 3 steps once.
    assert_eq!(o.matches("Epoch: [0][1/3]").count(), 1, "{o}");
    assert!(o.contains("Epoch: [0] done: 24 images"), "{o}");

    let a = Checkpoint::read(&one.path().join("checkpoint.safetensors")).unwrap();
    let b = Checkpoint::read(&two.path().join("checkpoint.safetensors")).unwrap();
    let (worst, name) = largest_difference(&a, &b);
    assert!(worst <= 1e-5, "{name}: differs by {worst:e} (relative)");
    // The comparison can fail: a step less is another state.
    let start = tempfile::tempdir().unwrap();
    let mut short = alexnet.to_vec();
    short.extend(["--limit-train", "16"]);
    run(&short, &out_dir(start.path()));
    let c = Checkpoint::read(&start.path().join("checkpoint.safetensors")).unwrap();
    let (step_less, _) = largest_difference(&a, &c);
    assert!(step_less > 100.0 * worst.max(1e-7), "{step_less:e}");
    eprintln!(
        "2 ranks vs 1 process: largest relative difference {worst:e}; a step less: {step_less:e}"
    );
}

/// The largest difference between two checkpoints' tensors, relative to the tensor's largest magnitude
/// (at least 1), and the tensor's name.
pub(crate) fn largest_difference(a: &Checkpoint, b: &Checkpoint) -> (f64, String) {
    let names: Vec<&str> = a.names().collect();
    assert_eq!(names, b.names().collect::<Vec<_>>());
    let mut worst = (0.0, String::new());
    for name in names {
        let (x, y) = (a.tensor(name).unwrap(), b.tensor(name).unwrap());
        let diff = (x - y).abs().max().double_value(&[]);
        let scale = x.abs().max().double_value(&[]).max(1.0);
        if diff / scale > worst.0 {
            worst = (diff / scale, name.to_owned());
        }
    }
    worst
}

/// ` * Acc@1 .. Acc@5 ..` and the summary's `over N images` of an evaluation.
fn accuracy(o: &str) -> (&str, &str) {
    let acc = o
        .lines()
        .find(|l| l.starts_with(" * Acc@1"))
        .unwrap_or_else(|| panic!("no accuracy line:\n{o}"));
    let over = o
        .lines()
        .find(|l| l.contains(" val Acc@1 "))
        .unwrap_or_else(|| panic!("no summary line:\n{o}"));
    (acc, over.split(" over ").nth(1).unwrap_or(over))
}

#[test]
fn validation_counts_every_image_once_on_any_world_size() {
    let checkpoint = runs().first_epoch.join("checkpoint.safetensors");
    let eval = |n: usize| {
        let mut extra = vec![
            "--evaluate".to_owned(),
            "--resume".into(),
            checkpoint.display().to_string(),
            "--limit-val".into(),
            "7".into(),
        ];
        if n > 1 {
            extra.extend(ranks(n));
        }
        stdout(&run(RESNET, &extra))
    };
    let one = eval(1);
    let (acc, over) = accuracy(&one);
    assert!(over.starts_with("7 images"), "{one}");
    for n in [2, 3] {
        let o = eval(n);
        assert_eq!(accuracy(&o), (acc, over), "{n} ranks:\n{o}");
    }
}

#[test]
fn a_two_rank_run_resumes_exactly() {
    let straight = tempfile::tempdir().unwrap();
    let resumed = tempfile::tempdir().unwrap();
    let with = |dir: &Path, epochs: &str, resume: Option<&Path>| {
        let mut extra = out_dir(dir);
        extra.extend(ranks(2));
        extra.extend(["--epochs".into(), epochs.into()]);
        if let Some(r) = resume {
            extra.extend(["--resume".into(), r.display().to_string()]);
        }
        run(RESNET, &extra)
    };
    with(straight.path(), "2", None);
    with(resumed.path(), "1", None);
    let first = resumed.path().join("checkpoint.safetensors");
    let o = stdout(&with(resumed.path(), "2", Some(&first)));
    assert!(!o.contains("Epoch: [0]"), "resumed at epoch 1:\n{o}");
    let a = Checkpoint::read(&straight.path().join("checkpoint.safetensors")).unwrap();
    let b = Checkpoint::read(&first).unwrap();
    assert_eq!(a.meta.epoch, 2);
    assert_same_state(&a, &b);
}

/// Starts a 2-rank run long enough to be interrupted, and returns it once rank 0 trains. Its standard
/// output is drained on a thread (a closed pipe would fail rank 0's next line).
fn start_long_run(dir: &Path) -> Child {
    let mut child = imgtrain()
        .arg(dataset())
        .args(RESNET)
        .args(out_dir(dir))
        .args(ranks(2))
        .args(["--epochs", "1000"])
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if line.starts_with("Epoch: [0][2/") {
                let _ = tx.send(());
            }
        }
    });
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        let out = child.wait_with_output().unwrap();
        panic!("the run ended before training:\n{}", stderr(&out));
    }
    child
}

/// The processes the launcher started (its children).
fn children(pid: u32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    text.split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

/// Waits for `child` at most `limit`; returns its stderr.
fn wait_for(mut child: Child, limit: Duration) -> (std::process::ExitStatus, String) {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return (status, err);
        }
        if start.elapsed() > limit {
            child.kill().unwrap();
            panic!("still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gone(pid: u32) -> bool {
    // A zombie still has a /proc entry until its parent reaps it; the launcher reaps its ranks.
    !Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn a_rank_killed_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let child = start_long_run(dir.path());
    let kids = children(child.id());
    assert_eq!(kids.len(), 2, "{kids:?}");
    // SAFETY: plain syscall on a process of this test.
    assert_eq!(unsafe { libc::kill(kids[1] as i32, libc::SIGKILL) }, 0);
    let (status, err) = wait_for(child, Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        err.contains("imgtrain: error: rank ")
            && err.contains(&format!(
                " (pid {}) was killed by signal 9 (SIGKILL); stopped the other 1 rank(s)",
                kids[1]
            )),
        "{err}"
    );
    assert!(kids.iter().all(|&k| gone(k)), "{kids:?} still there");
}

#[test]
fn ctrl_c_twice_on_the_launcher_kills_every_rank() {
    // Once asks the ranks to checkpoint and stop (see preempt.rs); twice kills them at once.
    let dir = tempfile::tempdir().unwrap();
    let child = start_long_run(dir.path());
    let kids = children(child.id());
    for _ in 0..2 {
        // SAFETY: plain syscall on a process of this test.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, err) = wait_for(child, Duration::from_secs(60));
    assert!(!status.success());
    assert!(
        err.contains("imgtrain: error: interrupted twice: killed the 2 rank(s) of this node"),
        "{err}"
    );
    assert!(kids.iter().all(|&k| gone(k)), "{kids:?} still there");
}

#[test]
fn ranks_of_a_killed_launcher_checkpoint_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = start_long_run(dir.path());
    let kids = children(child.id());
    child.kill().unwrap();
    child.wait().unwrap();
    // Each rank got SIGTERM from the kernel (its parent died): they agree, checkpoint and exit.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kids.iter().all(|&k| gone(k) || zombie(k)) {
        assert!(Instant::now() < deadline, "{kids:?} still running");
        std::thread::sleep(Duration::from_millis(100));
    }
    let ck = Checkpoint::read(&dir.path().join("checkpoint.safetensors")).unwrap();
    assert!(ck.meta.position.is_some() || ck.meta.epoch > 0);
}

/// Whether `pid` has exited but was not reaped (its parent, here init, will).
fn zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|r| r.trim_start().starts_with('Z'))
    })
}

/// A free port of the loopback interface.
fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One rank started by hand (as torchrun or srun would), with `--dist-timeout 3`.
fn rank_cmd(port: u16, rank: usize, world: usize, extra: &[&str]) -> Command {
    let mut cmd = imgtrain();
    cmd.arg(dataset())
        .args(RESNET)
        .args(["--epochs", "1", "--dist-timeout", "3"])
        .args(["--dist-url", &format!("tcp://127.0.0.1:{port}")])
        .args([
            "--world-size",
            &world.to_string(),
            "--rank",
            &rank.to_string(),
        ])
        .args(extra);
    cmd
}

/// Runs `cmd`, which must fail within `limit` without training; returns stderr.
fn fails_within(cmd: &mut Command, limit: Duration) -> String {
    let start = Instant::now();
    let out = cmd.output().unwrap();
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(!out.status.success(), "expected failure:\n{o}\n{e}");
    assert!(!o.contains("Epoch: ["), "training started:\n{o}");
    assert!(start.elapsed() < limit, "took {:?}:\n{e}", start.elapsed());
    e
}

#[test]
fn rendezvous_faults_are_clear_errors() {
    let limit = Duration::from_secs(30);
    // Nobody else comes: the store gives up after --dist-timeout.
    let port = free_port();
    let e = fails_within(&mut rank_cmd(port, 0, 2, &[]), limit);
    assert!(
        e.contains(&format!(
            "imgtrain (rank 0): error: rank 0 of 2: could not join the process group at 127.0.0.1:{port}: "
        )) && e.contains("1/2 clients joined"),
        "{e}"
    );
    // The port is taken by something else.
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = fails_within(&mut rank_cmd(port, 0, 2, &[]), limit);
    assert!(e.contains("address already in use"), "{e}");
    drop(taken);
    // Ranks started with different world sizes: the odd one says so at once.
    let port = free_port();
    let rank0 = rank_cmd(port, 0, 2, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let e = fails_within(&mut rank_cmd(port, 1, 3, &[]), limit);
    assert!(
        e.contains("this rank (1) was started with world size 3, rank 0 with world size 2"),
        "{e}"
    );
    let (status, e0) = wait_for(rank0, limit);
    assert!(!status.success(), "{e0}");
    // Flags that cannot work, refused before any rendezvous.
    let flag_cases: &[(&[&str], &str)] = &[
        (
            &[
                "--dist-url",
                "tcp://localhost",
                "--world-size",
                "2",
                "--rank",
                "0",
            ],
            "--dist-url: \"tcp://localhost\": expected tcp://HOST:PORT",
        ),
        (
            &[
                "--dist-url",
                "tcp://h:1",
                "--world-size",
                "2",
                "--rank",
                "2",
            ],
            "--rank: 2 is not below --world-size 2",
        ),
        (
            &["--world-size", "2", "--rank", "0"],
            "--dist-url: needed for a distributed run",
        ),
        (
            &[
                "--dist-url",
                "tcp://h:1",
                "--world-size",
                "2",
                "--rank",
                "0",
                "--dist-backend",
                "nccl",
            ],
            "--dist-backend: nccl needs CUDA devices",
        ),
        (
            &["--multiprocessing-distributed"],
            "--nproc-per-node: needed on the CPU",
        ),
        (
            &["--multiprocessing-distributed", "--nproc-per-node", "4"],
            "--batch-size: 6 does not divide among 4 processes per node",
        ),
        (
            &["--dist-url", "env://", "--world-size", "2", "--rank", "1"],
            "--dist-url env://: MASTER_ADDR is not set",
        ),
    ];
    for (flags, want) in flag_cases {
        let mut cmd = imgtrain();
        cmd.arg(dataset())
            .args(RESNET)
            .args(*flags)
            .env_remove("MASTER_ADDR");
        let e = fails_within(&mut cmd, limit);
        assert!(e.contains(want), "{flags:?}: {e}");
    }
}
