//! Which position each partition may commit, as acknowledgements come in.
//!
//! Sinks run independently and partitions concurrently, so acknowledgements arrive in any
//! order: a fast sink acknowledges round 3 while a slow one is still on round 1. A checkpoint
//! that passed a round some sink had not taken would lose it in a crash, so a partition commits
//! only the last position of the longest run of its oldest rounds (in poll order) that every
//! sink acknowledged, and one commit covers the whole run. Kept free of I/O and tasks so these
//! rules are tested alone.

use std::collections::{HashMap, VecDeque};

use tidewater_bus::Position;

pub(crate) struct Checkpoints {
    sinks: usize,
    partitions: HashMap<String, Rounds>,
    /// Rounds some sink has yet to acknowledge.
    in_flight: usize,
}

#[derive(Default)]
struct Rounds {
    next_seq: u64,
    /// Not yet handed out for commit, oldest first, with consecutive sequence numbers.
    open: VecDeque<Round>,
}

struct Round {
    seq: u64,
    last: Position,
    /// Per sink: whether it has acknowledged this round.
    acked: Vec<bool>,
    waiting: usize,
}

impl Checkpoints {
    pub(crate) fn new(sinks: usize) -> Self {
        Checkpoints {
            sinks,
            partitions: HashMap::new(),
            in_flight: 0,
        }
    }

    /// A new round of `partition`, after every round opened before it, ending at `last`.
    /// Returns its sequence number, which acknowledgements name.
    pub(crate) fn open(&mut self, partition: &str, last: Position) -> u64 {
        let rounds = self.partitions.entry(partition.to_string()).or_default();
        let seq = rounds.next_seq;
        rounds.next_seq += 1;
        rounds.open.push_back(Round {
            seq,
            last,
            acked: vec![false; self.sinks],
            waiting: self.sinks,
        });
        if self.sinks > 0 {
            self.in_flight += 1;
        }
        seq
    }

    /// `sink` took round `seq` of `partition` (or had nothing to take in it). `true` when that
    /// was the last sink the round waited for. A repeated or unknown acknowledgement changes
    /// nothing.
    pub(crate) fn ack(&mut self, partition: &str, seq: u64, sink: usize) -> bool {
        let Some(rounds) = self.partitions.get_mut(partition) else {
            return false;
        };
        let Some(front) = rounds.open.front().map(|r| r.seq) else {
            return false;
        };
        let Some(round) = seq
            .checked_sub(front)
            .and_then(|i| rounds.open.get_mut(i as usize))
        else {
            return false;
        };
        match round.acked.get_mut(sink) {
            Some(acked) if !*acked => *acked = true,
            _ => return false,
        }
        round.waiting -= 1;
        if round.waiting == 0 {
            self.in_flight -= 1;
            return true;
        }
        false
    }

    /// Per partition whose oldest rounds every sink acknowledged: the last position among
    /// them, to commit. They are forgotten, so each position is handed out once.
    pub(crate) fn committable(&mut self) -> Vec<(String, Position)> {
        let mut out = Vec::new();
        for (partition, rounds) in &mut self.partitions {
            let mut last = None;
            while rounds.open.front().is_some_and(|r| r.waiting == 0) {
                last = rounds.open.pop_front().map(|r| r.last);
            }
            if let Some(position) = last {
                out.push((partition.clone(), position));
            }
        }
        out
    }

    /// Rounds some sink has yet to acknowledge.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u64) -> Position {
        Position::Offset(offset)
    }

    #[test]
    fn never_passes_a_round_some_sink_has_not_acknowledged() {
        let mut c = Checkpoints::new(2);
        let r0 = c.open("p", at(9));
        let r1 = c.open("p", at(19));
        let r2 = c.open("p", at(29));
        // The fast sink took all three, the slow one only the last two.
        for seq in [r0, r1, r2] {
            c.ack("p", seq, 0);
        }
        c.ack("p", r2, 1);
        c.ack("p", r1, 1);
        assert!(c.committable().is_empty(), "round 0 waits for sink 1");
        assert_eq!(c.in_flight(), 1);
        assert!(c.ack("p", r0, 1));
        // One commit for the three rounds.
        assert_eq!(c.committable(), vec![("p".to_string(), at(29))]);
        assert!(c.committable().is_empty(), "handed out once");
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn a_gap_stops_the_run_and_partitions_are_apart() {
        let mut c = Checkpoints::new(1);
        let a0 = c.open("a", at(1));
        let a1 = c.open("a", at(2));
        let a2 = c.open("a", at(3));
        let b0 = c.open("b", at(100));
        c.ack("a", a0, 0);
        c.ack("a", a2, 0);
        c.ack("b", b0, 0);
        let mut ready = c.committable();
        ready.sort();
        assert_eq!(
            ready,
            vec![("a".to_string(), at(1)), ("b".to_string(), at(100))]
        );
        c.ack("a", a1, 0);
        assert_eq!(c.committable(), vec![("a".to_string(), at(3))]);
        // Sequence numbers go on after a commit.
        let a3 = c.open("a", at(4));
        assert_eq!(a3, 3);
        c.ack("a", a3, 0);
        assert_eq!(c.committable(), vec![("a".to_string(), at(4))]);
    }

    #[test]
    fn repeated_and_unknown_acknowledgements_change_nothing() {
        let mut c = Checkpoints::new(2);
        let r0 = c.open("p", at(5));
        assert!(!c.ack("p", r0, 0));
        assert!(!c.ack("p", r0, 0), "sink 0 again is not sink 1");
        assert!(!c.ack("p", r0 + 7, 1));
        assert!(!c.ack("q", r0, 1));
        assert!(!c.ack("p", r0, 5));
        assert!(c.committable().is_empty());
        assert!(c.ack("p", r0, 1));
        assert_eq!(c.committable(), vec![("p".to_string(), at(5))]);
        // Already committed: an acknowledgement that comes late is ignored.
        assert!(!c.ack("p", r0, 1));
    }

    #[test]
    fn out_of_order_acknowledgements_from_several_sinks() {
        // Every order of acknowledging 4 rounds by 3 sinks commits exactly the acknowledged
        // prefix, at every step.
        let sinks = 3;
        let rounds = 4u64;
        let acks: Vec<(u64, usize)> = (0..rounds)
            .flat_map(|r| (0..sinks).map(move |s| (r, s)))
            .collect();
        let mut rng = 0x9e3779b97f4a7c15u64;
        for _ in 0..200 {
            let mut order = acks.clone();
            for i in (1..order.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                order.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            let mut c = Checkpoints::new(sinks);
            for r in 0..rounds {
                c.open("p", at(r * 10));
            }
            let mut done = vec![0usize; rounds as usize];
            let mut committed: Option<u64> = None;
            for (r, s) in order {
                c.ack("p", r, s);
                done[r as usize] += 1;
                let prefix = done.iter().take_while(|n| **n == sinks).count() as u64;
                if let Some((_, Position::Offset(o))) = c.committable().pop() {
                    committed = Some(o);
                }
                let want = prefix.checked_sub(1).map(|last| last * 10);
                assert_eq!(committed, want);
            }
        }
    }
}
