//! Topics: sequence numbers are assigned at the topic (the same number in every copy), and
//! each subscription gets its own copy, with its own locks, delivery counts and dead-letter
//! sub-queue, when its rules match.
//!
//! Rule semantics (Service Bus "topic filters and actions"): rules without an action are
//! OR-ed and give at most one copy; each matching rule with an action gives a copy with that
//! action applied. A rule whose filter fails to evaluate is skipped, or — with
//! `dead_lettering_on_filter_evaluation_exceptions` — the message goes to the subscription's
//! dead-letter sub-queue. Copies without actions share one in-memory message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use keybus_amqp::Message;

use crate::address::SubQueue;
use crate::clock::Timestamp;
use crate::duplicates::DuplicateHistory;
use crate::entity::{
    FilterDefinition, QueueProperties, RuleDefinition, SubscriptionDefinition, TopicProperties,
};
use crate::error::SendError;
use crate::filter::{Filter, FilterError, MessageView, SqlFilter, SqlRuleAction, SystemProps};
use crate::queue::{
    IncomingMessage, Queue, check_sizes, message_id_key, scheduled_time, strip_broker_annotations,
};
use crate::store::{EntityName, EntitySnapshot, StoreOp};

/// A compiled rule.
#[derive(Debug, Clone)]
struct Rule {
    filter: Filter,
    action: Option<SqlRuleAction>,
}

/// Compile a rule definition; the error names the rule.
pub fn compile_rule(def: &RuleDefinition) -> Result<(Filter, Option<SqlRuleAction>), FilterError> {
    let filter = match &def.filter {
        FilterDefinition::True => Filter::True,
        FilterDefinition::False => Filter::False,
        FilterDefinition::Sql(text) => Filter::Sql(SqlFilter::parse(text)?),
        FilterDefinition::Correlation(c) => Filter::Correlation(c.clone()),
    };
    let action = def
        .action
        .as_deref()
        .filter(|a| !a.trim().is_empty())
        .map(SqlRuleAction::parse)
        .transpose()?;
    Ok((filter, action))
}

/// One subscription: a queue plus its rules.
#[derive(Debug)]
pub struct Subscription {
    pub queue: Queue,
    pub definition: SubscriptionDefinition,
    rules: Vec<Rule>,
    /// Records of this subscription that refer to the topic's stored body, as the store has
    /// them (derived from the ops that reach the store).
    body_refs: HashSet<(SubQueue, i64)>,
}

/// Why a rule could not be added or removed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("The rule '{0}' already exists on this subscription.")]
    AlreadyExists(String),
    /// Worded like a missing entity so that SDKs map it to `MessagingEntityNotFound`.
    #[error("The messaging entity 'Rules/{0}' could not be found.")]
    NotFound(String),
    #[error("The rule '{name}' is invalid: {reason}")]
    Invalid { name: String, reason: String },
    #[error("A subscription can have at most {0} rules.")]
    TooMany(usize),
}

/// Most rules per subscription (Service Bus quota).
pub const MAX_RULES: usize = 2000;

impl Subscription {
    pub fn rules(&self) -> &[RuleDefinition] {
        &self.definition.rules
    }

    /// `add-rule`: compile and append; returns the op that persists the new definition.
    pub fn add_rule(&mut self, def: RuleDefinition) -> Result<StoreOp, RuleError> {
        if self
            .definition
            .rules
            .iter()
            .any(|r| r.name.eq_ignore_ascii_case(&def.name))
        {
            return Err(RuleError::AlreadyExists(def.name));
        }
        if self.definition.rules.len() >= MAX_RULES {
            return Err(RuleError::TooMany(MAX_RULES));
        }
        let (filter, action) = compile_rule(&def).map_err(|e| RuleError::Invalid {
            name: def.name.clone(),
            reason: e.to_string(),
        })?;
        self.rules.push(Rule { filter, action });
        self.definition.rules.push(def);
        Ok(self.persist())
    }

    /// `remove-rule`; returns the op that persists the new definition.
    pub fn remove_rule(&mut self, name: &str) -> Result<StoreOp, RuleError> {
        let i = self
            .definition
            .rules
            .iter()
            .position(|r| r.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| RuleError::NotFound(name.to_string()))?;
        self.definition.rules.remove(i);
        self.rules.remove(i);
        Ok(self.persist())
    }

    /// Replace an existing rule (update-rule), keeping its position and creation time;
    /// returns the op that persists the new definition.
    pub fn replace_rule(&mut self, mut def: RuleDefinition) -> Result<StoreOp, RuleError> {
        let i = self
            .definition
            .rules
            .iter()
            .position(|r| r.name.eq_ignore_ascii_case(&def.name))
            .ok_or_else(|| RuleError::NotFound(def.name.clone()))?;
        let (filter, action) = compile_rule(&def).map_err(|e| RuleError::Invalid {
            name: def.name.clone(),
            reason: e.to_string(),
        })?;
        if let Some(old) = self.definition.rules.get(i) {
            def.created_at = old.created_at;
        }
        if let (Some(slot), Some(rule)) = (self.definition.rules.get_mut(i), self.rules.get_mut(i))
        {
            *slot = def;
            *rule = Rule { filter, action };
        }
        Ok(self.persist())
    }

    /// Replace the subscription's properties (update-subscription): the queue keeps its
    /// messages. Returns the op that persists the new definition.
    pub fn set_properties(
        &mut self,
        properties: QueueProperties,
        dead_lettering_on_filter_evaluation_exceptions: bool,
    ) -> StoreOp {
        self.queue.set_properties(properties.clone());
        self.definition.properties = properties;
        self.definition
            .dead_lettering_on_filter_evaluation_exceptions =
            dead_lettering_on_filter_evaluation_exceptions;
        self.persist()
    }

    fn persist(&self) -> StoreOp {
        StoreOp::PutEntity(crate::entity::EntityDefinition {
            name: format!(
                "{}/Subscriptions/{}",
                self.definition.topic, self.definition.name
            ),
            kind: crate::entity::EntityKind::Subscription(self.definition.clone()),
        })
    }

    /// Build a subscription; rules that fail to compile are reported.
    pub fn new(definition: SubscriptionDefinition, queue: Queue) -> Result<Subscription, String> {
        let mut rules = Vec::with_capacity(definition.rules.len());
        for r in &definition.rules {
            let (filter, action) =
                compile_rule(r).map_err(|e| format!("rule '{}': {e}", r.name))?;
            rules.push(Rule { filter, action });
        }
        let body_refs = queue.shared_body_refs().into_iter().collect();
        Ok(Subscription {
            queue,
            definition,
            rules,
            body_refs,
        })
    }
}

/// A topic with its subscriptions.
#[derive(Debug)]
pub struct Topic {
    /// Also the owner named by the subscription records that refer to its bodies.
    name: EntityName,
    props: TopicProperties,
    next_seq: i64,
    subs: BTreeMap<String, Subscription>,
    duplicates: DuplicateHistory,
    ops: Vec<StoreOp>,
    /// Messages accepted by the topic since start-up (for metrics).
    incoming: u64,
    /// Stored bodies and how many stored subscription records refer to each.
    bodies: HashMap<i64, u32>,
}

/// The sequence numbers a send produced, per subscription (to publish after the commit).
pub type Fanout = Vec<(String, Vec<i64>)>;

impl Topic {
    pub fn new(name: impl Into<String>, props: TopicProperties, next_sequence: i64) -> Topic {
        Topic {
            name: name.into().to_ascii_lowercase().into(),
            props,
            next_seq: next_sequence.max(1),
            subs: BTreeMap::new(),
            duplicates: DuplicateHistory::default(),
            ops: Vec::new(),
            bodies: HashMap::new(),
            incoming: 0,
        }
    }

    /// After every subscription was added at start-up: drop stored bodies no record refers to
    /// (left by a crash between a subscription's last use and the body's removal).
    pub fn collect_orphan_bodies(&mut self, stored: &[i64]) {
        for &seq in stored {
            if !self.bodies.contains_key(&seq) {
                self.ops.push(StoreOp::DeleteBody {
                    entity: self.name.clone(),
                    sequence_number: seq,
                });
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Messages accepted since start-up.
    pub fn incoming(&self) -> u64 {
        self.incoming
    }

    pub fn properties(&self) -> &TopicProperties {
        &self.props
    }

    /// Replace the topic's properties (update-topic); subscriptions keep their messages.
    pub fn set_properties(&mut self, props: TopicProperties) {
        self.props = props;
    }

    /// Remove a subscription (delete-subscription) with its messages: queues a `DeleteEntity`
    /// for its stored records and releases their references to the topic's stored bodies,
    /// deleting (in the same batch) every body no other subscription refers to. Writes the
    /// subscription queued but did not hand over are dropped: its records go anyway.
    pub fn remove_subscription(&mut self, name: &str) -> Option<Subscription> {
        let mut sub = self.subs.remove(&name.to_ascii_lowercase())?;
        drop(sub.queue.take_ops());
        self.ops.push(StoreOp::DeleteEntity {
            entity: sub.queue.shared_name(),
        });
        let mut released: Vec<i64> = sub.body_refs.drain().map(|(_, seq)| seq).collect();
        released.sort_unstable();
        for seq in released {
            let Some(n) = self.bodies.get_mut(&seq) else {
                continue;
            };
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.bodies.remove(&seq);
                self.ops.push(StoreOp::DeleteBody {
                    entity: self.name.clone(),
                    sequence_number: seq,
                });
            }
        }
        Some(sub)
    }

    /// Add a loaded subscription (its messages restored from `snapshot`).
    pub fn add_subscription(&mut self, sub: Subscription, snapshot_max_seq: i64) {
        self.next_seq = self.next_seq.max(snapshot_max_seq + 1);
        for (_, seq) in &sub.body_refs {
            *self.bodies.entry(*seq).or_default() += 1;
        }
        self.subs
            .insert(sub.definition.name.to_ascii_lowercase(), sub);
    }

    pub fn subscription(&self, name: &str) -> Option<&Subscription> {
        self.subs.get(&name.to_ascii_lowercase())
    }

    pub fn subscription_mut(&mut self, name: &str) -> Option<&mut Subscription> {
        self.subs.get_mut(&name.to_ascii_lowercase())
    }

    pub fn subscriptions_mut(&mut self) -> impl Iterator<Item = &mut Subscription> {
        self.subs.values_mut()
    }

    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subs.values()
    }

    /// Queue a write produced outside the send path (rule changes).
    pub fn push_op(&mut self, op: StoreOp) {
        self.ops.push(op);
    }

    /// Writes of the topic and all subscriptions, in order per entity. Follows which stored
    /// records refer to the topic's bodies and removes a body in the batch that drops its last
    /// reference (so a body is never deleted while a durable record needs it).
    pub fn take_ops(&mut self) -> Vec<StoreOp> {
        let mut ops = std::mem::take(&mut self.ops);
        let mut released = Vec::new();
        for s in self.subs.values_mut() {
            for op in s.queue.take_ops() {
                let (key, refers) = match &op {
                    StoreOp::PutMessage { sub, record, .. } => {
                        ((*sub, record.sequence_number), record.body_owner.is_some())
                    }
                    StoreOp::DeleteMessage {
                        sub,
                        sequence_number,
                        ..
                    } => ((*sub, *sequence_number), false),
                    _ => {
                        ops.push(op);
                        continue;
                    }
                };
                let key = (store_sub(key.0), key.1);
                if refers && s.body_refs.insert(key) {
                    *self.bodies.entry(key.1).or_default() += 1;
                } else if !refers && s.body_refs.remove(&key) {
                    if let Some(n) = self.bodies.get_mut(&key.1) {
                        *n = n.saturating_sub(1);
                    }
                    released.push(key.1);
                }
                ops.push(op);
            }
        }
        for seq in released {
            if self.bodies.get(&seq) == Some(&0) {
                self.bodies.remove(&seq);
                ops.push(StoreOp::DeleteBody {
                    entity: self.name.clone(),
                    sequence_number: seq,
                });
            }
        }
        ops
    }

    /// A subscription's message was forwarded by a batch that deleted its record outside
    /// [`Topic::take_ops`]: forget it and release its body reference.
    pub fn forwarded(&mut self, subscription: &str, sub: SubQueue, seq: i64) {
        let Some(s) = self.subs.get_mut(&subscription.to_ascii_lowercase()) else {
            return;
        };
        s.queue.forwarded(sub, seq);
        if s.body_refs.remove(&(store_sub(sub), seq))
            && let Some(n) = self.bodies.get_mut(&seq)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.bodies.remove(&seq);
                self.ops.push(StoreOp::DeleteBody {
                    entity: self.name.clone(),
                    sequence_number: seq,
                });
            }
        }
    }

    fn check(&self, msgs: &[IncomingMessage]) -> Result<(), SendError> {
        let used = self
            .subs
            .values()
            .map(|s| s.queue.size_bytes())
            .max()
            .unwrap_or(0);
        check_sizes(
            &self.name,
            msgs,
            self.props.max_message_size,
            used,
            self.props.max_size_bytes,
        )
    }

    fn prune_duplicates(&mut self, now: Timestamp) {
        self.duplicates
            .prune(now, self.props.duplicate_detection_window_ms);
    }

    /// Accept messages sent to the topic: assign sequence numbers and give each matching
    /// subscription its pending copy. With `schedule`, messages must carry a schedule time.
    pub fn enqueue(
        &mut self,
        msgs: Vec<IncomingMessage>,
        now: Timestamp,
        schedule: bool,
    ) -> Result<(Vec<i64>, Fanout), SendError> {
        self.check(&msgs)?;
        if schedule && msgs.iter().any(|m| scheduled_time(&m.message).is_none()) {
            return Err(SendError::Argument(
                "A scheduled message must carry x-opt-scheduled-enqueue-time.".into(),
            ));
        }
        if self.props.requires_duplicate_detection {
            self.prune_duplicates(now);
        }
        let mut seqs = Vec::with_capacity(msgs.len());
        let mut fanout: BTreeMap<String, Vec<i64>> = BTreeMap::new();
        for m in msgs {
            let mut message = m.message;
            if self.props.requires_duplicate_detection
                && let Some(id) = message_id_key(&message)
            {
                if self.duplicates.contains(&id) && !schedule {
                    continue;
                }
                self.duplicates.remember(id, now);
            }
            strip_broker_annotations(&mut message);
            crate::queue::forwarding::set_hops(&mut message, m.hops);
            apply_topic_ttl(&mut message, self.props.default_message_ttl_ms);
            let seq = self.next_seq;
            self.next_seq += 1;
            self.incoming += 1;
            seqs.push(seq);
            let shared = Arc::new(message);
            let sys = SystemProps {
                sequence_number: seq,
                enqueued_time: now,
            };
            let mut shared_copies = 0;
            for (key, sub) in self.subs.iter_mut() {
                let copy = deliver_to(sub, &shared, &self.name, m.size, seq, &sys, now);
                if copy != Copy::None {
                    fanout.entry(key.clone()).or_default().push(seq);
                }
                shared_copies += usize::from(copy == Copy::Shared);
            }
            if shared_copies > 0 {
                self.ops.push(StoreOp::PutBody {
                    entity: self.name.clone(),
                    sequence_number: seq,
                    message: shared,
                });
            }
        }
        self.ops.push(StoreOp::PutSequence {
            entity: self.name.clone(),
            next: self.next_seq,
        });
        Ok((seqs, fanout.into_iter().collect()))
    }

    /// Publish committed copies; true if any subscription got an available message.
    pub fn commit_pending(&mut self, fanout: &Fanout) -> bool {
        let mut any = false;
        for (key, seqs) in fanout {
            if let Some(s) = self.subs.get_mut(key) {
                any |= s.queue.commit_pending(seqs);
            }
        }
        any
    }

    pub fn abort_pending(&mut self, fanout: &Fanout) {
        for (key, seqs) in fanout {
            if let Some(s) = self.subs.get_mut(key) {
                s.queue.abort_pending(seqs);
            }
        }
    }

    /// `cancel-scheduled-message` on the topic cancels the copies in every subscription.
    pub fn cancel_scheduled(&mut self, seqs: &[i64]) {
        for s in self.subs.values_mut() {
            s.queue.cancel_scheduled(seqs);
        }
    }

    pub fn tick(&mut self, now: Timestamp) -> bool {
        if self.props.requires_duplicate_detection {
            self.prune_duplicates(now);
        }
        let mut woke = false;
        for s in self.subs.values_mut() {
            if s.queue.next_deadline().is_some_and(|d| d <= now) {
                woke |= s.queue.tick(now);
            }
        }
        woke
    }

    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.subs
            .values()
            .filter_map(|s| s.queue.next_deadline())
            .min()
    }
}

/// A topic's default TTL caps the message's own, as a subscription's does.
fn apply_topic_ttl(message: &mut Message, default_ttl: Option<i64>) {
    let Some(default_ttl) = default_ttl else {
        return;
    };
    let cap = u32::try_from(default_ttl).unwrap_or(u32::MAX);
    let header = message.header.get_or_insert_with(Default::default);
    header.ttl = Some(header.ttl.filter(|t| *t > 0).map_or(cap, |t| t.min(cap)));
}

/// What a subscription got of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    None,
    /// The topic's message itself, stored once as the topic's body.
    Shared,
    /// Its own copy (changed by a rule action, or dead-lettered).
    Own,
}

/// The sub-queue as the store keys it (the transfer dead-letter queue is the dead-letter set).
fn store_sub(sub: SubQueue) -> SubQueue {
    match sub {
        SubQueue::Main => SubQueue::Main,
        SubQueue::DeadLetter | SubQueue::TransferDeadLetter => SubQueue::DeadLetter,
    }
}

/// Evaluate a subscription's rules and add its copy.
fn deliver_to(
    sub: &mut Subscription,
    shared: &Arc<Message>,
    owner: &Arc<str>,
    size: u32,
    seq: i64,
    sys: &SystemProps,
    now: Timestamp,
) -> Copy {
    let view = MessageView::new(shared, sys);
    let mut plain_match = false;
    let mut with_action: Option<Message> = None;
    let mut failure: Option<String> = None;
    for rule in &sub.rules {
        match rule.filter.matches(&view) {
            Ok(true) => match &rule.action {
                None => plain_match = true,
                Some(action) => {
                    // One subscription keeps one copy per sequence number: the first matching
                    // rule with an action decides its content.
                    if with_action.is_none() {
                        let mut copy = Message::clone(shared);
                        match action.apply(&mut copy, sys) {
                            Ok(()) => with_action = Some(copy),
                            Err(e) => failure = Some(format!("rule action failed: {e}")),
                        }
                    }
                }
            },
            Ok(false) => {}
            Err(e) => failure = Some(format!("filter evaluation failed: {e}")),
        }
    }
    if let Some(copy) = with_action {
        sub.queue.accept_copy(seq, Arc::new(copy), size, now, None);
        return Copy::Own;
    }
    if plain_match {
        sub.queue
            .accept_copy(seq, shared.clone(), size, now, Some(owner.clone()));
        return Copy::Shared;
    }
    if let Some(description) = failure
        && sub
            .definition
            .dead_lettering_on_filter_evaluation_exceptions
    {
        sub.queue
            .dead_letter_copy(seq, Message::clone(shared), size, now, description);
        // Dead-lettered at once: in the subscription's dead-letter queue, not a live copy.
    }
    Copy::None
}

/// Highest sequence number in a snapshot (for restoring the topic's counter).
pub fn max_sequence(snapshot: &EntitySnapshot) -> i64 {
    snapshot
        .main
        .iter()
        .chain(snapshot.dead_letter.iter())
        .map(|r| r.sequence_number)
        .max()
        .unwrap_or(0)
        .max(snapshot.next_sequence - 1)
}
