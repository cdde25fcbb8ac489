//! The handshake: `Hello` from the initiator, `HelloYourself` from the
//! acceptor, each carrying its protocol version and the limits it announces
//! (and enforces). It runs on the link's halves before the session is shared,
//! within the configured handshake timeout.

use crate::rules::Rule;
use std::time::Duration;

use super::outbound::ErasedTx;
use super::{Role, link_failed};
use crate::error::SessionError;
use crate::link::{LinkError, LinkRx, LinkTx};
use crate::wire::{self, Message, PROTOCOL_VERSION, Settings};

/// Runs the handshake as `role`, announcing `ours`, giving up after
/// `timeout`: the peer's settings.
pub(super) async fn run<T: LinkTx, R: LinkRx>(
    tx: &mut T,
    rx: &mut R,
    role: Role,
    ours: &Settings,
    timeout: Duration,
) -> Result<Settings, SessionError> {
    let hello = match role {
        Role::Initiator => Message::Hello {
            version: PROTOCOL_VERSION,
            settings: ours.clone(),
        },
        Role::Acceptor => Message::HelloYourself {
            version: PROTOCOL_VERSION,
            settings: ours.clone(),
        },
    };
    let exchange = async {
        if role == Role::Initiator {
            send_on(tx, &hello).await.map_err(link_failed)?;
        }
        let frame = rx
            .recv()
            .await
            .map_err(link_failed)?
            .ok_or_else(|| SessionError::Link {
                detail: "the peer closed the link during the handshake".into(),
            })?;
        let msg = wire::decode(&frame).map_err(|e| SessionError::Violation {
            rule: Rule::FrameDecodable.name(),
            detail: format!("handshake frame: {e}"),
        })?;
        let (version, settings) = match (role, msg) {
            (Role::Initiator, Message::HelloYourself { version, settings }) => (version, settings),
            (Role::Acceptor, Message::Hello { version, settings }) => (version, settings),
            (_, Message::Goodbye { reason }) => return Err(SessionError::Goodbye { reason }),
            (_, other) => {
                return Err(SessionError::Violation {
                    rule: Rule::HandshakeHelloFirst.name(),
                    detail: format!("expected the peer's hello, got {}", other.kind()),
                });
            }
        };
        drop(frame);
        if version != PROTOCOL_VERSION {
            let goodbye = Message::Goodbye {
                reason: format!(
                    "protocol version mismatch: this side speaks {PROTOCOL_VERSION}, the peer speaks {version}"
                ),
            };
            let _ = send_on(tx, &goodbye).await;
            return Err(SessionError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: version,
            });
        }
        if role == Role::Acceptor {
            send_on(tx, &hello).await.map_err(link_failed)?;
        }
        Ok(settings)
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(SessionError::HandshakeTimeout { after: timeout }),
    }
}

/// Sends one message on a link half that is not shared yet (the handshake).
pub(super) async fn send_on<T: LinkTx>(tx: &mut T, msg: &Message<'_>) -> Result<(), LinkError> {
    ErasedTx::send_frame(tx, msg.encoded_len(), &|buf| {
        msg.write_to(buf);
    })
    .await
}
