//! The session's behaviour suites that change nothing process-wide, in one
//! test binary (each binary links the whole dependency tree, so one binary
//! builds much faster than thirteen). Each module is one suite; run one
//! with e.g. `cargo test -p osmos-session --test suite reconnect::`.

#[path = "../common/mod.rs"]
mod common;

mod answers_after_frames;
mod answers_aside;
mod call_context;
mod following_target;
mod peer_rules;
mod raw_peer;
mod receive_here;
mod reconnect;
mod response_metadata;
mod schema;
mod service_attribute;
mod shm_cross_process;
mod shm_lends;
mod shm_wakes;
mod stable_failures;
mod stable_session;
mod stream_endings;
