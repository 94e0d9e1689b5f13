//! Give-to-get accounting: per partner, bytes we hold for them and bytes they hold for us.
//!
//! A partner may store with us as much as it stores for us, plus a configurable allowance (so a
//! new pairing can start before either side has given anything). The ledger is plain data
//! (serde) so the node persists it on the data partition; memory is one small entry per partner.
//! Generic over the peer type: the node keys it by `libp2p::PeerId`, the simulation and the
//! tests by the crate's text [`PeerId`].

use crate::PeerId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use thiserror::Error;

/// Both sides of the books for one partner, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Bytes of the partner's shards we hold.
    pub held_for_them: u64,
    /// Bytes of our shards the partner holds.
    pub held_for_us: u64,
}

/// Why a partner's put is refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum QuotaError<P = PeerId> {
    /// The partner would use more than it contributes plus the allowance.
    #[error(
        "partner {partner}: refusing {requested} bytes: we would hold {would_hold} bytes for it \
         while it holds {contributed} bytes for us (allowance {allowance} bytes)"
    )]
    Exceeded {
        /// The partner whose put is refused.
        partner: P,
        /// Bytes the put would store.
        requested: u64,
        /// Bytes we would then hold for the partner.
        would_hold: u64,
        /// Bytes the partner holds for us.
        contributed: u64,
        /// Bytes any partner may store beyond what it stores for us.
        allowance: u64,
    },
    /// The peer is not a paired partner.
    #[error("peer {0} is not a paired partner")]
    UnknownPartner(P),
}

/// The give-to-get books of this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de> + Ord"))]
pub struct Ledger<P = PeerId> {
    /// Bytes any partner may store beyond what it stores for us.
    pub allowance: u64,
    partners: BTreeMap<P, Account>,
}

impl<P: Ord + Clone> Ledger<P> {
    /// An empty ledger with the given allowance in bytes.
    pub fn new(allowance: u64) -> Self {
        Ledger {
            allowance,
            partners: BTreeMap::new(),
        }
    }

    /// Records a paired partner (keeps its books if already known).
    pub fn add_partner(&mut self, partner: P) {
        self.partners.entry(partner).or_default();
    }

    /// Forgets a partner and its books (after unpairing).
    pub fn remove_partner(&mut self, partner: &P) -> Option<Account> {
        self.partners.remove(partner)
    }

    /// The partner's books, if it is paired.
    pub fn account(&self, partner: &P) -> Option<Account> {
        self.partners.get(partner).copied()
    }

    /// Paired partners and their books, in peer-id order.
    pub fn partners(&self) -> impl Iterator<Item = (&P, &Account)> {
        self.partners.iter()
    }

    fn get(&self, partner: &P) -> Result<&Account, QuotaError<P>> {
        self.partners
            .get(partner)
            .ok_or_else(|| QuotaError::UnknownPartner(partner.clone()))
    }

    fn get_mut(&mut self, partner: &P) -> Result<&mut Account, QuotaError<P>> {
        self.partners
            .get_mut(partner)
            .ok_or_else(|| QuotaError::UnknownPartner(partner.clone()))
    }

    /// Whether we may accept `bytes` more of `partner`'s shards.
    pub fn may_accept(&self, partner: &P, bytes: u64) -> Result<(), QuotaError<P>> {
        let a = self.get(partner)?;
        let would_hold = a.held_for_them.saturating_add(bytes);
        if would_hold > a.held_for_us.saturating_add(self.allowance) {
            return Err(QuotaError::Exceeded {
                partner: partner.clone(),
                requested: bytes,
                would_hold,
                contributed: a.held_for_us,
                allowance: self.allowance,
            });
        }
        Ok(())
    }

    /// Checks the quota and, if it allows, books `bytes` as held for `partner`.
    pub fn accept(&mut self, partner: &P, bytes: u64) -> Result<(), QuotaError<P>> {
        self.may_accept(partner, bytes)?;
        let a = self.get_mut(partner)?;
        a.held_for_them = a.held_for_them.saturating_add(bytes);
        Ok(())
    }

    /// Sets what we hold for `partner` (rebuilt from the chunk store at start).
    pub fn set_held_for_them(&mut self, partner: &P, bytes: u64) {
        self.partners
            .entry(partner.clone())
            .or_default()
            .held_for_them = bytes;
    }

    /// Sets what `partner` holds for us (rebuilt from our placement records at start).
    pub fn set_held_for_us(&mut self, partner: &P, bytes: u64) {
        self.partners
            .entry(partner.clone())
            .or_default()
            .held_for_us = bytes;
    }

    /// Books the release of `bytes` we held for `partner` (deleted or lease expired).
    pub fn released_for_them(&mut self, partner: &P, bytes: u64) -> Result<(), QuotaError<P>> {
        let a = self.get_mut(partner)?;
        a.held_for_them = a.held_for_them.saturating_sub(bytes);
        Ok(())
    }

    /// Books what we hold for `from` to `to` (a new plug of the same owner took over): `to`'s
    /// account gets `from`'s bytes, `from` keeps none.
    pub fn transfer_held_for_them(&mut self, from: &P, to: &P) -> u64 {
        let bytes = self
            .partners
            .get_mut(from)
            .map_or(0, |a| std::mem::take(&mut a.held_for_them));
        let a = self.partners.entry(to.clone()).or_default();
        a.held_for_them = a.held_for_them.saturating_add(bytes);
        bytes
    }

    /// Books `bytes` of ours that `partner` confirmed it stores.
    pub fn stored_with_them(&mut self, partner: &P, bytes: u64) -> Result<(), QuotaError<P>> {
        let a = self.get_mut(partner)?;
        a.held_for_us = a.held_for_us.saturating_add(bytes);
        Ok(())
    }

    /// Books the removal of `bytes` of ours from `partner` (deleted, or lost per audit).
    pub fn removed_from_them(&mut self, partner: &P, bytes: u64) -> Result<(), QuotaError<P>> {
        let a = self.get_mut(partner)?;
        a.held_for_us = a.held_for_us.saturating_sub(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> PeerId {
        PeerId::new(s)
    }

    #[test]
    fn freeloader_is_refused_beyond_its_allowance_with_a_clear_message() {
        let mut l = Ledger::new(1000);
        l.add_partner(p("alice"));
        l.accept(&p("alice"), 600).unwrap();
        l.accept(&p("alice"), 400).unwrap();
        let err = l.accept(&p("alice"), 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "partner alice: refusing 1 bytes: we would hold 1001 bytes for it while it holds 0 bytes \
             for us (allowance 1000 bytes)"
        );
        assert_eq!(
            l.account(&p("alice")).unwrap().held_for_them,
            1000,
            "a refused put books nothing"
        );
    }

    #[test]
    fn contributing_raises_the_quota_and_releases_lower_usage() {
        let mut l = Ledger::new(100);
        l.add_partner(p("bob"));
        assert!(l.may_accept(&p("bob"), 101).is_err());
        l.stored_with_them(&p("bob"), 500).unwrap();
        l.accept(&p("bob"), 600).unwrap();
        assert!(l.may_accept(&p("bob"), 1).is_err());
        l.released_for_them(&p("bob"), 50).unwrap();
        l.may_accept(&p("bob"), 50).unwrap();
        l.removed_from_them(&p("bob"), 500).unwrap();
        assert!(
            l.may_accept(&p("bob"), 1).is_err(),
            "losing their contribution lowers their quota"
        );
    }

    #[test]
    fn unknown_peer_is_refused_by_name() {
        let mut l = Ledger::new(u64::MAX);
        let err = l.accept(&p("mallory"), 1).unwrap_err();
        assert_eq!(err.to_string(), "peer mallory is not a paired partner");
        l.add_partner(p("mallory"));
        l.accept(&p("mallory"), u64::MAX).unwrap();
        assert!(l.remove_partner(&p("mallory")).is_some());
        assert!(l.may_accept(&p("mallory"), 0).is_err());
    }

    #[test]
    fn ledger_survives_persistence() {
        let mut l = Ledger::new(4096);
        l.add_partner(p("a"));
        l.add_partner(p("b"));
        l.accept(&p("a"), 10).unwrap();
        l.stored_with_them(&p("b"), 20).unwrap();
        let text = serde_json::to_string(&l).unwrap();
        let back: Ledger = serde_json::from_str(&text).unwrap();
        assert_eq!(back, l);
        assert_eq!(back.account(&p("b")).unwrap().held_for_us, 20);
        assert_eq!(back.partners().count(), 2);
    }

    proptest! {
        // Any sequence of bookings keeps the invariant the quota promises.
        #[test]
        fn accepted_usage_never_exceeds_contribution_plus_allowance(
            allowance in 0u64..10_000,
            ops in proptest::collection::vec((0u8..4, 0u64..5_000), 0..64)
        ) {
            let mut l = Ledger::new(allowance);
            let q = p("q");
            l.add_partner(q.clone());
            for (op, n) in ops {
                let before = l.account(&q).unwrap();
                match op {
                    0 => {
                        let ok = l.accept(&q, n).is_ok();
                        let after = l.account(&q).unwrap();
                        if ok {
                            prop_assert!(after.held_for_them <= after.held_for_us + allowance);
                        } else {
                            prop_assert_eq!(after, before);
                        }
                    }
                    1 => l.released_for_them(&q, n).unwrap(),
                    2 => l.stored_with_them(&q, n).unwrap(),
                    _ => l.removed_from_them(&q, n).unwrap(),
                }
            }
        }
    }
}
