//! Containment: a hostile cell cannot exhaust the host, forge its logs, or
//! starve a sibling, through anything but the segment (the segment's own
//! attacks are `hostile.rs`).
//!
//! Each test spawns a well-behaved sibling and an attacking `attack-cell`,
//! measures the host (`/proc/self`: resident memory, threads, fds), starts
//! the attack while the sibling is called every millisecond, and asserts:
//! the host's growth stays within the bounds in `harness.rs` during the
//! attack and comes back near the baseline after; every sibling call
//! succeeds; the attacker is throttled, truncated or refused, and the host
//! says so naming what it did. Each prints its figures:
//!
//! ```text
//! cargo test -p osmos-tests --test containment -- --nocapture 2>&1 | grep '^containment'
//! OSMOS_CONTAINMENT_LONG=1 cargo test -p osmos-tests --test containment -- --nocapture  # long versions
//! ```
//!
//! The tests run one at a time (they measure the whole process).

mod harness;
mod lifecycle;

use harness::{Scene, Usage, bounded, quick_summary, run, size};
use std::time::Duration;

use osmos_host::LogLimits;
use osmos_tests::{AttackKind, CONTROL_GARBAGE_DONE, INVALID_UTF8_DONE, LONG_LINE_DONE};

/// `flood line {i}\n` for every `i` below `n`, in bytes.
fn flood_bytes(n: u64) -> u64 {
    (0..n).map(|i| 12 + i.to_string().len() as u64).sum()
}

#[test]
fn a_long_line_without_newline_is_truncated_and_drained() {
    run(|log| async move {
        let before = Usage::now();
        let amount = size(64 << 20, 2 << 30);
        let mut scene = Scene::new("long-line", |b| b).await;
        let (l, a) = (log.clone(), scene.attacker.clone());
        scene
            .attack(AttackKind::LongLine, amount, async move || {
                l.wait_for("the line after the long one", |e| {
                    e.by_cell("attacker") && e.text.starts_with(LONG_LINE_DONE)
                })
                .await;
                assert!(a.stats().logs.output_bytes >= amount);
            })
            .await;
        let max = LogLimits::default().max_line;
        let events = log.events();
        let cut: Vec<_> = events
            .iter()
            .filter(|e| e.by_cell("attacker") && e.text.starts_with("xxxx"))
            .collect();
        assert_eq!(cut.len(), 1, "one truncated line, forwarded once");
        assert!(
            cut[0]
                .text
                .contains(&format!("[truncated: the line is longer than {max} bytes")),
            "{}",
            &cut[0].text[cut[0].text.len() - 200..]
        );
        assert!(cut[0].text.len() < max + 200, "{}", cut[0].text.len());
        assert_eq!(scene.attacker.stats().logs.lines_truncated, 1);
        scene.finish(before).await;
    });
}

#[test]
fn invalid_utf8_is_converted_and_never_stops_the_forwarder() {
    run(|log| async move {
        let before = Usage::now();
        // What is judged here is the conversion: no line may be rate-limited away.
        let all = LogLimits {
            per_second: 1_000_000,
            burst: 1_000_000,
            ..LogLimits::default()
        };
        let mut scene = Scene::new("invalid-utf8", |b| b.log_limits(all)).await;
        let l = log.clone();
        scene
            .attack(AttackKind::InvalidUtf8, size(2_000, 20_000), async move || {
                for stream in ["stdout", "stderr"] {
                    l.wait_for(
                        &format!("the honest line after the invalid ones on {stream}"),
                        |e| {
                            e.by_cell("attacker")
                                && e.text.starts_with(INVALID_UTF8_DONE)
                                && e.text.contains(&format!("stream={stream}"))
                        },
                    )
                    .await;
                }
            })
            .await;
        assert!(
            log.any(|e| e.by_cell("attacker") && e.text.starts_with("line 0: caf\u{fffd} \u{fffd}")),
            "invalid bytes arrive as U+FFFD"
        );
        scene.finish(before).await;
    });
}

#[test]
fn a_stderr_flood_is_rate_limited_counted_and_summarized() {
    run(|log| async move {
        let before = Usage::now();
        let lines = size(500_000, 20_000_000);
        let mut scene = Scene::new("stderr-flood", |b| b.log_limits(quick_summary())).await;
        let (l, a) = (log.clone(), scene.attacker.clone());
        scene
            .attack(AttackKind::StderrFlood, lines, async move || {
                let bytes = flood_bytes(lines);
                harness::until("the host to drain the flood", || {
                    a.stats().logs.output_bytes >= bytes
                })
                .await;
                l.wait_for("the drop summary", |e| {
                    e.about_cell("attacker") && e.text.contains("wrote more than its log rate allows")
                })
                .await;
            })
            .await;
        let s = scene.attacker.stats().logs;
        assert!(
            s.lines_dropped > 0 && s.lines_forwarded + s.lines_dropped >= lines,
            "{s:?}"
        );
        // The burst plus the refill over the attack, no more.
        let forwarded = log.events().iter().filter(|e| e.by_cell("attacker")).count() as u64;
        assert_eq!(forwarded, s.lines_forwarded);
        let tail = scene.attacker.stderr_tail();
        assert!(
            tail.last().is_some_and(|l| l.starts_with("flood line ")),
            "{tail:?}"
        );
        assert!(tail.iter().map(|l| l.len()).sum::<usize>() <= 4096);
        scene.finish(before).await;
    });
}

#[test]
fn a_log_flood_with_newlines_and_escapes_is_escaped_and_rate_limited() {
    run(|log| async move {
        let before = Usage::now();
        let mut scene = Scene::new("log-flood", |b| b.log_limits(quick_summary())).await;
        let (l, a) = (log.clone(), scene.attacker.clone());
        scene
            .attack(AttackKind::LogFlood, size(50_000, 5_000_000), async move || {
                l.wait_for("the drop summary", |e| {
                    e.about_cell("attacker") && e.text.contains("wrote more than its log rate allows")
                })
                .await;
                assert!(a.stats().logs.records_dropped > 0);
            })
            .await;
        let events = log.events();
        let from_attacker: Vec<_> = events.iter().filter(|e| e.by_cell("attacker")).collect();
        assert!(!from_attacker.is_empty());
        for e in &from_attacker {
            assert!(
                !e.text.contains(['\n', '\r', '\x1b', '\x07', '\u{202e}']),
                "a cell's record reached the host's log unescaped: {:?}",
                e.text
            );
            assert!(
                e.text.starts_with(
                    "line one\\nINFO osmos_host::cell: cell 'sibling' exited with status 0\\x1b[2J"
                ),
                "{:?}",
                e.text
            );
            assert!(e.text.contains("from=evil\\ntarget\\x1b[31m"), "{:?}", e.text);
        }
        // Nothing the attacker sent passes for the host's own or the sibling's.
        assert!(
            !events
                .iter()
                .any(|e| e.text.contains("forged") && !e.by_cell("attacker"))
        );
        scene.finish(before).await;
    });
}

#[test]
fn control_socket_garbage_and_passed_fds_are_refused_and_it_is_still_read() {
    run(|log| async move {
        let before = Usage::now();
        let mut scene = Scene::new("control-garbage", |b| b.log_limits(quick_summary())).await;
        let (l, c) = (log.clone(), scene.client());
        scene
            .attack(
                AttackKind::ControlGarbage,
                size(2_000, 200_000),
                async move || {
                    // The record sent after the garbage may find the cell's
                    // log rate used up, and be dropped; one sent a moment
                    // later finds a token. No garbage round (0) then just
                    // sends that record again.
                    let done = |e: &harness::Event| {
                        e.by_cell("attacker") && e.text.starts_with(CONTROL_GARBAGE_DONE)
                    };
                    bounded("the valid record after the garbage", async {
                        while !l.any(done) {
                            c.start(AttackKind::ControlGarbage.name().into(), 0)
                                .await
                                .unwrap();
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    })
                    .await;
                },
            )
            .await;
        let s = scene.attacker.stats().logs;
        assert!(s.packets_refused > 0 && s.packets_with_ancillary > 0, "{s:?}");
        log.wait_for("the refusal summary", |e| {
            e.about_cell("attacker") && e.text.contains("malformed control packets")
        })
        .await;
        let sibling_logs = bounded(
            "a sibling log",
            scene
                .sibling
                .cell
                .client::<osmos_tests::TestCellClient>()
                .unwrap()
                .log("the sibling still logs".into()),
        )
        .await;
        assert!(sibling_logs.is_ok());
        log.wait_for("the sibling's record", |e| {
            e.by_cell("sibling") && e.text.starts_with("the sibling still logs")
        })
        .await;
        scene.finish(before).await;
    });
}
