//! Node addresses as clients send them (`q`, `/q`, `amqps://host:port/q`, `q/$management`,
//! `t/Subscriptions/s/$DeadLetterQueue`), normalised to entity paths.

/// Which message set of an entity a node names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubQueue {
    Main,
    DeadLetter,
    TransferDeadLetter,
}

/// What kind of node an address names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Entity(SubQueue),
    Management(SubQueue),
    Cbs,
}

/// A parsed node address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeAddress {
    /// Entity path, lower-cased for lookup (`orders`, `t1/subscriptions/s1`).
    pub entity: String,
    pub kind: NodeKind,
}

/// Strip `scheme://authority` and leading `/`.
pub fn strip_authority(address: &str) -> &str {
    let rest = match address.find("://") {
        Some(i) => {
            let after = &address[i + 3..];
            match after.find('/') {
                Some(j) => &after[j..],
                None => "",
            }
        }
        None => address,
    };
    rest.trim_start_matches('/')
}

impl NodeAddress {
    /// Parse a link address. Returns `None` for an empty address.
    pub fn parse(address: &str) -> Option<NodeAddress> {
        let path = strip_authority(address).trim_end_matches('/');
        if path.is_empty() {
            return None;
        }
        if path.eq_ignore_ascii_case("$cbs") {
            return Some(NodeAddress {
                entity: String::new(),
                kind: NodeKind::Cbs,
            });
        }
        let mut segs: Vec<&str> = path.split('/').collect();
        let mut management = false;
        if segs
            .last()
            .is_some_and(|s| s.eq_ignore_ascii_case("$management"))
        {
            management = true;
            segs.pop();
        }
        let mut sub = SubQueue::Main;
        if segs
            .last()
            .is_some_and(|s| s.eq_ignore_ascii_case("$deadletterqueue"))
        {
            segs.pop();
            sub = SubQueue::DeadLetter;
            if segs
                .last()
                .is_some_and(|s| s.eq_ignore_ascii_case("$transfer"))
            {
                segs.pop();
                sub = SubQueue::TransferDeadLetter;
            }
        }
        if segs.is_empty() || segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        let entity = segs.join("/").to_ascii_lowercase();
        let kind = if management {
            NodeKind::Management(sub)
        } else {
            NodeKind::Entity(sub)
        };
        Some(NodeAddress { entity, kind })
    }

    pub fn sub_queue(&self) -> SubQueue {
        match self.kind {
            NodeKind::Entity(s) | NodeKind::Management(s) => s,
            NodeKind::Cbs => SubQueue::Main,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_shapes() {
        let a = NodeAddress::parse("amqps://localhost:5673/Orders").unwrap();
        assert_eq!(a.entity, "orders");
        assert_eq!(a.kind, NodeKind::Entity(SubQueue::Main));
        let a = NodeAddress::parse("/orders").unwrap();
        assert_eq!(a.entity, "orders");
        let a = NodeAddress::parse("orders/$management").unwrap();
        assert_eq!(a.kind, NodeKind::Management(SubQueue::Main));
        let a = NodeAddress::parse("orders/$DeadLetterQueue/$management").unwrap();
        assert_eq!(a.kind, NodeKind::Management(SubQueue::DeadLetter));
        let a = NodeAddress::parse("t/Subscriptions/s/$DeadLetterQueue").unwrap();
        assert_eq!(a.entity, "t/subscriptions/s");
        assert_eq!(a.kind, NodeKind::Entity(SubQueue::DeadLetter));
        let a = NodeAddress::parse("q/$Transfer/$DeadLetterQueue").unwrap();
        assert_eq!(a.kind, NodeKind::Entity(SubQueue::TransferDeadLetter));
        assert_eq!(NodeAddress::parse("$cbs").unwrap().kind, NodeKind::Cbs);
        assert!(NodeAddress::parse("").is_none());
        assert!(NodeAddress::parse("amqps://host").is_none());
        assert!(NodeAddress::parse("a//b").is_none());
    }
}
