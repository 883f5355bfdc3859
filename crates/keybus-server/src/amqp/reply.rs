//! Reply links: the responses of `$cbs` and `$management`, sent on the link whose target the
//! request named.

use super::receive::write_transfer;
use super::state::{Conn, LinkKind};

impl Conn {
    /// Find the link a response goes out on (wire reference §7.1 routing rule).
    pub(crate) fn reply_link(
        &self,
        channel: u16,
        reply_to: Option<&str>,
        node: &str,
    ) -> Option<(u16, u32)> {
        let replies = || {
            self.sessions.iter().flat_map(|(ch, s)| {
                s.links.iter().filter_map(move |(h, l)| match &l.kind {
                    LinkKind::ReplyOut { node, target, .. } => {
                        Some((*ch, *h, l.name.as_str(), node.as_str(), target.as_deref()))
                    }
                    _ => None,
                })
            })
        };
        if let Some(rt) = reply_to {
            if let Some((ch, h, ..)) = replies().find(|(_, _, _, _, t)| *t == Some(rt)) {
                return Some((ch, h));
            }
            if let Some((ch, h, ..)) = replies().find(|(_, _, name, _, _)| *name == rt) {
                return Some((ch, h));
            }
        }
        replies()
            .find(|(ch, _, _, n, _)| *ch == channel && n.eq_ignore_ascii_case(node))
            .or_else(|| replies().find(|(_, _, _, n, _)| n.eq_ignore_ascii_case(node)))
            .map(|(ch, h, ..)| (ch, h))
    }

    /// Send a response message pre-settled on a reply link.
    pub(crate) fn send_reply(&mut self, channel: u16, handle: u32, message: &[u8]) {
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = s.links.get_mut(&handle) else {
            return;
        };
        let LinkKind::ReplyOut { next_tag, .. } = &mut link.kind else {
            return;
        };
        let tag = next_tag.to_be_bytes();
        *next_tag += 1;
        let id = s.next_delivery_id;
        s.next_delivery_id = id.wrapping_add(1);
        let frames = write_transfer(
            &mut self.out,
            self.peer_max_frame,
            channel,
            handle,
            id,
            &tag,
            true,
            message,
        );
        s.next_outgoing_id = s.next_outgoing_id.wrapping_add(frames);
        s.remote_incoming_window = s.remote_incoming_window.saturating_sub(frames);
    }
}
