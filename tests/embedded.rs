//! Embedded handlers: timeouts through the stop signal, fencing of late completions, panics; and
//! the embedding API (a handler run on its own, dead letters through `Runtime`). Only the public
//! API is used here.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use duejob::wire::{DeadSelect, ErrorCode, State};
use duejob::{Config, Handler, JobContext, JobError, JobSpec, Runtime, StopReason};

fn wait_state(rt: &Runtime, id: u64, state: State) -> duejob::wire::JobInfo {
    let t = Instant::now();
    loop {
        let j = rt.status(id).unwrap().expect("job known");
        if j.state == state {
            return j;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "job {id} never became {state}: {j:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn one_attempt(kind: &str, timeout_ms: Option<u64>) -> JobSpec<'_> {
    JobSpec {
        max_attempts: Some(1),
        timeout_ms,
        ..JobSpec::new("default", kind, "{}")
    }
}

#[test]
fn timeouts_stop_handlers_and_late_completions_are_fenced() {
    let dir = tempfile::tempdir().unwrap();
    let saw_stop = Arc::new(AtomicU32::new(0));
    let seen = saw_stop.clone();
    let stubborn_done = Arc::new(AtomicU32::new(0));
    let done = stubborn_done.clone();
    // The stubborn handler returns only once the test lets it (after its attempt was given up):
    // a timed return could race the give-up timer on a busy machine.
    let release = Arc::new(AtomicU32::new(0));
    let released = release.clone();
    let rt = Runtime::builder(dir.path())
        .config(Config::with_workers(2))
        // Checks its token and returns early when told to stop.
        .register(
            "polite",
            move |ctx: &JobContext<'_>| -> Result<(), JobError> {
                let t = Instant::now();
                while t.elapsed() < Duration::from_secs(30) {
                    if ctx.should_stop() == Some(StopReason::TimedOut) {
                        seen.fetch_add(1, Ordering::SeqCst);
                        return Err("stopped early".into());
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(())
            },
        )
        // Ignores its token, then claims success long after the grace period.
        .register(
            "stubborn",
            move |_: &JobContext<'_>| -> Result<(), JobError> {
                while released.load(Ordering::SeqCst) == 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            },
        )
        .register("panicky", |_: &JobContext<'_>| -> Result<(), JobError> {
            panic!("handler bug")
        })
        .start()
        .unwrap();

    let polite = rt.submit(&one_attempt("polite", Some(100))).unwrap().id;
    let j = wait_state(&rt, polite, State::Dead);
    assert_eq!(
        saw_stop.load(Ordering::SeqCst),
        1,
        "the handler saw its stop signal"
    );
    assert_eq!(
        j.attempts[0].outcome,
        Some(duejob::wire::AttemptOutcome::TimedOut),
        "{j:?}"
    );

    let stubborn = rt.submit(&one_attempt("stubborn", Some(100))).unwrap().id;
    let j = wait_state(&rt, stubborn, State::Dead);
    let err = j.attempts[0].error.as_deref().unwrap();
    assert!(err.contains("did not stop within"), "{err}");
    // The handler comes back with "success" later: fenced, the job stays dead.
    release.store(1, Ordering::SeqCst);
    let t = Instant::now();
    // The exact event: its worker is free again, which happens only once the dispatcher has
    // handled the late report.
    while stubborn_done.load(Ordering::SeqCst) == 0 || rt.stats().unwrap().sched.busy > 0 {
        assert!(t.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(rt.status(stubborn).unwrap().unwrap().state, State::Dead);

    // A panic is a failed attempt; the workers survive and keep running jobs.
    let p = rt.submit(&one_attempt("panicky", None)).unwrap().id;
    let j = wait_state(&rt, p, State::Dead);
    assert!(
        j.attempts[0]
            .error
            .as_deref()
            .unwrap()
            .contains("handler panicked: handler bug"),
        "{j:?}"
    );
    for _ in 0..10 {
        let id = rt
            .submit(&JobSpec::new("default", "noop", "{}"))
            .unwrap()
            .id;
        wait_state(&rt, id, State::Succeeded);
    }
    let s = rt.stats().unwrap();
    assert_eq!(s.sched.queues["default"].timeouts, 2);
    rt.shutdown();
}

#[test]
fn cancelling_a_running_embedded_job_reaches_its_handler() {
    let dir = tempfile::tempdir().unwrap();
    let stopped = Arc::new(AtomicU32::new(0));
    let s2 = stopped.clone();
    let rt = Runtime::builder(dir.path())
        .config(Config::with_workers(2))
        .register(
            "loop",
            move |ctx: &JobContext<'_>| -> Result<(), JobError> {
                loop {
                    if ctx.should_stop() == Some(StopReason::Cancelled) {
                        s2.fetch_add(1, Ordering::SeqCst);
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            },
        )
        .start()
        .unwrap();
    let id = rt
        .submit(&JobSpec::new("default", "loop", "{}"))
        .unwrap()
        .id;
    wait_state(&rt, id, State::Running);
    assert_eq!(rt.cancel(id).unwrap(), State::Running);
    let t = Instant::now();
    while stopped.load(Ordering::SeqCst) == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the handler never saw the cancel"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // It returned Ok, but the job was cancelled: it stays cancelled.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(rt.status(id).unwrap().unwrap().state, State::Cancelled);
    rt.shutdown();
}

#[test]
fn a_handler_runs_outside_the_runtime_with_a_context_of_its_own() {
    let double = |ctx: &JobContext<'_>| -> Result<(), JobError> {
        let v: serde_json::Value = serde_json::from_str(ctx.payload).map_err(|e| e.to_string())?;
        match v["n"].as_u64() {
            Some(n) if ctx.should_stop().is_none() && ctx.queue == "default" => {
                assert_eq!((ctx.id, ctx.attempt, n * 2), (7, 2, 42));
                Ok(())
            }
            _ => Err(JobError::permanent("no n")),
        }
    };
    assert_eq!(
        double.run(&JobContext::new(7, 2, "default", r#"{"n":21}"#)),
        Ok(())
    );
    let e = double
        .run(&JobContext::new(7, 2, "default", "{}"))
        .unwrap_err();
    assert!(e.permanent && e.reason == "no n", "{e:?}");
}

#[test]
fn a_dead_selection_with_neither_id_nor_all_purges_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rt = Runtime::builder(dir.path())
        .config(Config::with_workers(2))
        .register("doomed", |_: &JobContext<'_>| -> Result<(), JobError> {
            Err(JobError::permanent("never works"))
        })
        .start()
        .unwrap();
    let id = rt
        .submit(&JobSpec::new("default", "doomed", "{}"))
        .unwrap()
        .id;
    wait_state(&rt, id, State::Dead);
    // An empty selection, and `before` on a retry, are refused as the protocol refuses them:
    // they must not mean "every dead job".
    let bad = [
        (DeadSelect::default(), false),
        (DeadSelect::default(), true),
        (
            DeadSelect {
                before: Some(u64::MAX),
                ..DeadSelect::all(None)
            },
            true,
        ),
        (
            DeadSelect {
                queue: Some("default".into()),
                ..DeadSelect::one(id)
            },
            false,
        ),
    ];
    for (sel, retry) in bad {
        let r = if retry {
            rt.dead_retry(&sel)
        } else {
            rt.dead_purge(&sel)
        };
        assert_eq!(r.unwrap_err().code, ErrorCode::BadRequest, "{sel:?}");
    }
    let dead = rt.dead_list(None, None).unwrap();
    assert_eq!(dead.iter().map(|j| j.id).collect::<Vec<_>>(), [id]);
    assert_eq!(
        rt.dead_purge(&DeadSelect::all(Some("default"))).unwrap(),
        [id]
    );
    assert!(rt.dead_list(None, None).unwrap().is_empty());
    rt.shutdown();
}
