//! `imgtrain --multiprocessing-distributed`: `main.py`'s `mp.spawn`. Starts one process per GPU of the
//! node (or `--nproc-per-node` of them), each a rank of the run, and watches them: when one fails, the
//! others are stopped (SIGTERM, then SIGKILL after [`GRACE`]) and the launcher exits non-zero naming the
//! rank and how it ended. SIGINT or SIGTERM to the launcher is passed on (as SIGTERM) to every rank,
//! which finishes its step, checkpoints and exits 0 (preemption); a second signal kills them. The ranks
//! run in their own process group, so a terminal's Ctrl-C reaches them once, through the launcher.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tch::Cuda;

use crate::config::{DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, TrainConfig, per_process};
use crate::dist::{Backend, LOCAL_RANK_ENV, NPROC_ENV, URL_ENV};
use crate::error::{Result, TrainError};

/// How long a rank has to exit after SIGTERM before it is killed.
pub const GRACE: Duration = Duration::from_secs(10);
/// How often the launcher looks at its ranks.
const POLL: Duration = Duration::from_millis(50);

fn bad<T>(what: &'static str, reason: impl Into<String>) -> Result<T> {
    Err(TrainError::Config {
        what,
        reason: reason.into(),
    })
}

/// How a process ended, in words: `exited with status 3`, `was killed by signal 9 (SIGKILL)`.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => format!("was killed by signal {sig} ({})", signal_name(sig)),
        _ => format!("ended with {status}"),
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// The launcher's rendezvous: the URL given, or on a single node a free port of the loopback interface.
fn rendezvous(cfg: &TrainConfig) -> Result<String> {
    if let Some(url) = &cfg.dist.url {
        return Ok(url.clone());
    }
    if cfg.dist.world_size.unwrap_or(1) > 1 {
        return bad(
            "--dist-url",
            "needed with more than one node: tcp://HOST:PORT of node 0, the same on every node",
        );
    }
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| TrainError::Config {
            what: "--dist-url",
            reason: format!("no free port on 127.0.0.1 for the rendezvous: {e}"),
        })?;
    let port = listener
        .local_addr()
        .map_err(|e| TrainError::Config {
            what: "--dist-url",
            reason: format!("no free port on 127.0.0.1 for the rendezvous: {e}"),
        })?
        .port();
    Ok(format!("tcp://127.0.0.1:{port}"))
}

/// Processes per node: `--nproc-per-node`, else one per visible GPU.
fn processes(cfg: &TrainConfig) -> Result<usize> {
    let gpus = usize::try_from(Cuda::device_count()).unwrap_or(0);
    let nccl = match cfg.dist.backend {
        Some(b) => b == Backend::Nccl,
        None => gpus > 0,
    };
    match cfg.dist.nproc_per_node {
        Some(n) if nccl && n > gpus => bad(
            "--nproc-per-node",
            format!("{n} NCCL processes need {n} GPUs; {gpus} are visible"),
        ),
        Some(n) => Ok(n),
        None if gpus > 0 => Ok(gpus),
        None => bad(
            "--nproc-per-node",
            "needed on the CPU (no GPU is visible): how many Gloo processes to start on this node",
        ),
    }
}

/// Sends `sig` to a child that has not been reaped.
fn signal(child: &Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: plain syscall on our own child's pid (not yet reaped, so not reused).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// One started rank.
struct Started {
    rank: usize,
    child: Child,
    status: Option<ExitStatus>,
}

/// Stops every rank still running: SIGTERM, then SIGKILL for those still there after [`GRACE`].
fn stop_all(ranks: &mut [Started]) {
    for r in ranks.iter().filter(|r| r.status.is_none()) {
        signal(&r.child, libc::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    loop {
        let mut running = 0;
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            match r.child.try_wait() {
                Ok(Some(s)) => r.status = Some(s),
                Ok(None) => running += 1,
                Err(_) => r.status = Some(ExitStatus::from_raw(libc::SIGKILL)),
            }
        }
        if running == 0 {
            return;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(POLL);
    }
    for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
        signal(&r.child, libc::SIGKILL);
        r.status = r.child.wait().ok();
    }
}

/// Starts this node's ranks and waits for them; `Ok` when every one exited with status 0.
pub fn run(cfg: &TrainConfig) -> Result<()> {
    cfg.validate()?;
    let nproc = processes(cfg)?;
    // The node's batch and threads must share out before anything starts (each rank checks again).
    per_process(
        cfg.batch_size.unwrap_or(DEFAULT_BATCH_SIZE),
        cfg.workers.unwrap_or(DEFAULT_WORKERS),
        nproc,
    )?;
    let url = rendezvous(cfg)?;
    let node = cfg.dist.rank.unwrap_or(0);
    let exe = std::env::current_exe().map_err(|e| TrainError::Config {
        what: "--multiprocessing-distributed",
        reason: format!("cannot find imgtrain's own executable to start the ranks: {e}"),
    })?;
    // Counts the signals received: the first is passed on, the second kills.
    let signals = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let counter = Arc::clone(&signals);
        // SAFETY: the handler only increments an atomic counter, which is async-signal-safe.
        unsafe {
            signal_hook::low_level::register(sig, move || {
                counter.fetch_add(1, Ordering::SeqCst);
            })
        }
        .map_err(|e| TrainError::Config {
            what: "--multiprocessing-distributed",
            reason: format!("cannot watch for Ctrl-C: {e}"),
        })?;
    }
    println!(
        "=> starting {nproc} process(es) on node {node} (ranks {}..{}), rendezvous {url}",
        node * nproc,
        node * nproc + nproc - 1
    );
    let mut ranks: Vec<Started> = Vec::with_capacity(nproc);
    for local in 0..nproc {
        let mut command = Command::new(&exe);
        command
            .args(cfg.args.iter().skip(1))
            .env(LOCAL_RANK_ENV, local.to_string())
            .env(NPROC_ENV, nproc.to_string())
            .env(URL_ENV, &url)
            .process_group(0);
        // SAFETY: the closure runs between fork and exec and only calls prctl, which is
        // async-signal-safe and sets a flag of the child.
        unsafe {
            command.pre_exec(|| {
                // A launcher that dies without passing anything on (kill -9, the OOM killer) still
                // stops its ranks: each gets SIGTERM, checkpoints and exits.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = command.spawn();
        match spawned {
            Ok(child) => ranks.push(Started {
                rank: node * nproc + local,
                child,
                status: None,
            }),
            Err(e) => {
                stop_all(&mut ranks);
                return bad(
                    "--multiprocessing-distributed",
                    format!("could not start rank {}: {e}", node * nproc + local),
                );
            }
        }
    }
    // Watch: the first rank to fail stops the rest; a signal to the launcher is passed on.
    let mut failed: Option<(usize, u32, ExitStatus)> = None;
    let mut passed_on = false;
    loop {
        for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
            if let Ok(Some(s)) = r.child.try_wait() {
                r.status = Some(s);
                if !s.success() && failed.is_none() {
                    failed = Some((r.rank, r.child.id(), s));
                }
            }
        }
        let received = signals.load(Ordering::SeqCst);
        if received >= 1 && !passed_on {
            passed_on = true;
            println!(
                "=> interrupted: asking every rank to finish its step and checkpoint (again to kill)"
            );
            for r in ranks.iter().filter(|r| r.status.is_none()) {
                signal(&r.child, libc::SIGTERM);
            }
        }
        if received >= 2 {
            for r in ranks.iter_mut().filter(|r| r.status.is_none()) {
                signal(&r.child, libc::SIGKILL);
                r.status = r.child.wait().ok();
            }
            return Err(TrainError::Interrupted { ranks: ranks.len() });
        }
        if let Some((rank, pid, status)) = failed {
            stop_all(&mut ranks);
            return Err(TrainError::RankFailed {
                rank,
                pid,
                how: describe(status),
                stopped: ranks.len() - 1,
            });
        }
        if ranks.iter().all(|r| r.status.is_some()) {
            if passed_on {
                println!("=> every rank stopped cleanly");
            }
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}
