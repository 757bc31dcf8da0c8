//! The one conversion between the hook vocabulary (`steer-hooks`) and the contract's enums.
//! On the wire UNSPECIFIED means the default: RESID_PRE (ActAdd's convention) and PREFIX.
//! An unknown enum value is `None`; the services turn it into an error naming the field.

pub use steer_hooks::{HookKind, HookPoint, Placement};

use crate::v1;

impl From<HookKind> for v1::Hook {
    fn from(kind: HookKind) -> Self {
        match kind {
            HookKind::ResidPre => v1::Hook::ResidPre,
            HookKind::BlockOutput => v1::Hook::BlockOutput,
        }
    }
}

impl From<HookPoint> for v1::HookPoint {
    fn from(p: HookPoint) -> Self {
        v1::HookPoint { hook: v1::Hook::from(p.kind()) as i32, layer: p.layer() as u32 }
    }
}

impl From<Placement> for v1::SteeringMode {
    fn from(p: Placement) -> Self {
        match p {
            Placement::Prefix => v1::SteeringMode::Prefix,
            Placement::AllPositions => v1::SteeringMode::AllPositions,
        }
    }
}

/// A wire `Hook` value as a kind (UNSPECIFIED is RESID_PRE; unknown is `None`).
pub fn hook_kind(hook: i32) -> Option<HookKind> {
    match v1::Hook::try_from(hook).ok()? {
        v1::Hook::Unspecified | v1::Hook::ResidPre => Some(HookKind::ResidPre),
        v1::Hook::BlockOutput => Some(HookKind::BlockOutput),
    }
}

/// A wire `SteeringMode` value as a placement (UNSPECIFIED is PREFIX; unknown is `None`).
pub fn placement(mode: i32) -> Option<Placement> {
    match v1::SteeringMode::try_from(mode).ok()? {
        v1::SteeringMode::Unspecified | v1::SteeringMode::Prefix => Some(Placement::Prefix),
        v1::SteeringMode::AllPositions => Some(Placement::AllPositions),
    }
}

impl v1::HookPoint {
    /// The point this message names (its layer unchecked; an unknown hook is `None`).
    pub fn point(&self) -> Option<HookPoint> {
        Some(hook_kind(self.hook)?.at(self.layer as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_point_and_placement_round_trips_and_unspecified_is_the_default() {
        for kind in HookKind::ALL {
            assert_eq!(hook_kind(v1::Hook::from(kind) as i32), Some(kind));
            let p = kind.at(7);
            assert_eq!(v1::HookPoint::from(p).point(), Some(p));
        }
        for p in Placement::ALL {
            assert_eq!(placement(v1::SteeringMode::from(p) as i32), Some(p));
        }
        assert_eq!(hook_kind(v1::Hook::Unspecified as i32), Some(HookKind::default()));
        assert_eq!(placement(v1::SteeringMode::Unspecified as i32), Some(Placement::default()));
        assert_eq!(hook_kind(99), None);
        assert_eq!(placement(-1), None);
    }
}
