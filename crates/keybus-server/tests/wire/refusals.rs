//! Refusals over the wire, with the conditions Service Bus gives: a token signed with the
//! wrong key, a link without a token, a missing entity, a message over the entity's
//! maximum size.

use std::time::{SystemTime, UNIX_EPOCH};

use keybus_client::{ClientError, Connection, sas};

use crate::harness::{Broker, Store, T, message, on_both_stores};

on_both_stores!(
    wrong_key_is_unauthorized,
    missing_entity_is_not_found,
    oversized_message
);

async fn wrong_key_is_unauthorized(store: Store) {
    let b = Broker::start(store).await;
    let e = b.endpoint();
    let mut c = Connection::connect(&e, T).await.unwrap();
    let audience = e.audience("q");
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let key_name = e.key_name.clone().unwrap();
    let token = sas::token(&audience, &key_name, "not-the-key", expiry);
    match c.put_token_for(&audience, &token, T).await {
        Err(ClientError::Auth { status, .. }) => assert_eq!(status, 401),
        other => panic!("expected a 401 put-token, got {other:?}"),
    }
    // Without a valid token the link is refused.
    let err = c.create_sender("q", T).await.unwrap_err();
    assert_eq!(err.condition(), Some("amqp:unauthorized-access"), "{err}");
    // The connection still works once a good token is put.
    c.put_token("q", T).await.unwrap();
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("ok", b"x"), T).await.unwrap();
}

async fn missing_entity_is_not_found(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["nope"]).await;
    let err = c.create_sender("nope", T).await.unwrap_err();
    assert_eq!(err.condition(), Some("amqp:not-found"), "{err}");
    let err = c
        .create_receiver("nope", &Default::default(), T)
        .await
        .unwrap_err();
    assert_eq!(err.condition(), Some("amqp:not-found"), "{err}");
}

async fn oversized_message(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["small"]).await;
    let snd = c.create_sender("small", T).await.unwrap();
    let err = c
        .send(snd, &message("big", &[7u8; 4096]), T)
        .await
        .unwrap_err();
    assert_eq!(
        err.condition(),
        Some("amqp:link:message-size-exceeded"),
        "{err}"
    );
    // A message within the limit still goes.
    c.send(snd, &message("fits", &[7u8; 100]), T).await.unwrap();
}
