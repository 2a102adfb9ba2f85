//! Ranking: score the gateways that pass every check and pick the best one.
//!
//! Scores are integers (fixed-point fractions) so the choice is exact and
//! identical on every platform; ties go to the lower gateway id.

use crate::feasible;
use crate::ledger::Ledger;
use crate::model::{Placement, Resources};

/// Fixed-point 1.0: a whole dimension of a gateway's allocatable.
pub(crate) const ONE: u64 = 1 << 20;
const SHIFT: u32 = 40;

/// Worth a whole dimension of free capacity: the previous gateway keeps the
/// instance (and its cached image) unless another gateway would be more than
/// a full dimension emptier (spread) or fuller (binpack) afterwards.
pub(crate) const STICKY_BONUS: u64 = ONE;

/// Per-gateway multipliers turning amounts into fractions of allocatable
/// with one multiply and shift, avoiding divisions on the hot path. Rounded
/// up so that all of allocatable is exactly [`ONE`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scale {
    cpu: u64,
    memory: u64,
}

impl Scale {
    pub fn of(allocatable: Resources) -> Self {
        let mul = |total: u64| {
            if total == 0 {
                0
            } else {
                u64::try_from((u128::from(ONE) << SHIFT).div_ceil(u128::from(total)))
                    .unwrap_or(u64::MAX)
            }
        };
        Scale {
            cpu: mul(allocatable.cpu_millis),
            memory: mul(allocatable.memory_bytes),
        }
    }

    /// Sum of the cpu and memory fractions `r` represents here, in `0..=2*ONE`
    /// whenever `r` is within allocatable. A dimension a gateway offers none of
    /// counts as 0, so it neither attracts nor repels.
    pub fn share(self, r: Resources) -> u64 {
        fraction(r.cpu_millis, self.cpu).saturating_add(fraction(r.memory_bytes, self.memory))
    }
}

fn fraction(amount: u64, mul: u64) -> u64 {
    u64::try_from((u128::from(amount) * u128::from(mul)) >> SHIFT).unwrap_or(u64::MAX)
}

/// What ranking needs to know about the instance being placed.
pub(crate) struct Ask<'c> {
    pub requests: Resources,
    pub placement: Placement,
    /// Replicas per gateway, present only for `spread: node` workloads.
    pub spread: Option<&'c [u32]>,
    /// Ledger position of the previous gateway, if it is still known.
    pub sticky: Option<usize>,
}

/// Higher is better.
pub(crate) fn score(placement: Placement, left_share: u64, sticky: bool) -> u64 {
    let base = match placement {
        Placement::Spread => left_share,
        Placement::Binpack => (2 * ONE).saturating_sub(left_share),
    };
    if sticky {
        base + STICKY_BONUS
    } else {
        base
    }
}

/// The best gateway among `candidates` (already past the static checks) that
/// also has room and respects spread now, or `None` if none does. Equal
/// scores (e.g. instances that request nothing) go to the gateway holding
/// fewer instances (spread) or more (binpack), then to the lower id.
pub(crate) fn best_node(ledger: &Ledger<'_>, candidates: &[usize], ask: &Ask<'_>) -> Option<usize> {
    let mut best: Option<(u64, u64, usize)> = None;
    let mut best_load = 0u32;
    for &n in candidates {
        let free = ledger.free(n);
        if !free.fits(ask.requests) || !feasible::spread_allows(ask.spread, n) {
            continue;
        }
        let left = free.minus(ask.requests).as_resources();
        let s = score(
            ask.placement,
            ledger.scale(n).share(left),
            ask.sticky == Some(n),
        );
        let id = ledger.node_id(n);
        let load = ledger.load(n);
        let lighter = match ask.placement {
            Placement::Spread => load < best_load,
            Placement::Binpack => load > best_load,
        };
        let better = match best {
            None => true,
            Some((bs, bid, _)) => {
                s > bs || (s == bs && (lighter || (load == best_load && id < bid)))
            }
        };
        if better {
            best = Some((s, id, n));
            best_load = load;
        }
    }
    best.map(|(_, _, n)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_is_the_sum_of_fractions() {
        let s = Scale::of(Resources::new(4000, 4 << 30));
        assert_eq!(s.share(Resources::new(4000, 4 << 30)), 2 * ONE);
        assert_eq!(s.share(Resources::new(2000, 0)), ONE / 2);
        assert_eq!(s.share(Resources::new(1000, 1 << 30)), ONE / 2);
        assert_eq!(s.share(Resources::ZERO), 0);
    }

    #[test]
    fn a_dimension_offered_as_zero_scores_zero() {
        let s = Scale::of(Resources::new(0, 1 << 30));
        assert_eq!(s.share(Resources::new(500, 1 << 29)), ONE / 2);
    }

    #[test]
    fn spread_prefers_more_left_and_binpack_less() {
        assert!(score(Placement::Spread, 10, false) > score(Placement::Spread, 5, false));
        assert!(score(Placement::Binpack, 5, false) > score(Placement::Binpack, 10, false));
    }

    #[test]
    fn stickiness_beats_anything_short_of_a_whole_dimension() {
        let sticky = score(Placement::Spread, ONE / 4, true);
        assert!(sticky > score(Placement::Spread, ONE, false));
        assert!(sticky < score(Placement::Spread, 2 * ONE, false));
    }
}
