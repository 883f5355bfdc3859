//! `keybus bench config` prints a file the broker reads: the generator lives in keybus-cli,
//! which must not depend on the server, so the round trip is checked here, where both are
//! dependencies.

use keybus_cli::bench::config::{ConfigArgs, KEY, KEY_NAME, entities_toml};
use keybus_core::EntityKind;
use keybus_server::config::Config;

fn generate(
    queues: usize,
    topics: usize,
    subscriptions: usize,
    mb: Option<u64>,
) -> Result<Config, String> {
    let text = entities_toml(&ConfigArgs {
        queues,
        topics,
        subscriptions,
        queue_max_size_mb: mb,
    });
    Config::parse(&text).map_err(|e| format!("generated config does not parse: {e}\n{text}"))
}

#[test]
fn the_idle_population_parses_with_every_entity() -> Result<(), String> {
    let cfg = generate(10_000, 1_000, 2, None)?;
    let count = |f: fn(&EntityKind) -> bool| cfg.entities.iter().filter(|e| f(&e.kind)).count();
    assert_eq!(count(|k| matches!(k, EntityKind::Queue(_))), 10_000);
    assert_eq!(count(|k| matches!(k, EntityKind::Topic(_))), 1_000);
    assert_eq!(count(|k| matches!(k, EntityKind::Subscription(_))), 2_000);
    assert!(
        cfg.entities
            .iter()
            .any(|e| e.name == "bench-topic-1000/Subscriptions/s2")
    );
    assert!(cfg.entities.iter().any(|e| e.name == "bench-10000"));
    assert!(cfg.entities.iter().any(|e| e.name == "bench-topic-1000"));
    let policy = cfg
        .policies
        .first()
        .map(|p| (p.name.as_str(), p.key.as_str()));
    assert_eq!(policy, Some((KEY_NAME, KEY)));
    Ok(())
}

#[test]
fn the_queue_size_reaches_the_queue_properties() -> Result<(), String> {
    let cfg = generate(1, 0, 2, Some(4096))?;
    let sizes: Vec<u64> = cfg
        .entities
        .iter()
        .filter_map(|e| match &e.kind {
            EntityKind::Queue(q) => Some(q.max_size_bytes),
            EntityKind::Topic(_) | EntityKind::Subscription(_) => None,
        })
        .collect();
    assert_eq!(sizes, vec![4096 * 1024 * 1024]);
    Ok(())
}
