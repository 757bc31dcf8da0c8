//! The one conversion between the hook vocabulary (`steer-hooks`) and the contract's enums.
//! On the wire UNSPECIFIED means the default: RESID_PRE (ActAdd's convention), PREFIX and ADD.
//! An unknown enum value is `None`; the services turn it into an error naming the field.

pub use steer_hooks::{HookKind, HookPoint, Op, Window};

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

impl From<Window> for v1::SteeringMode {
    fn from(w: Window) -> Self {
        match w {
            Window::Prefix => v1::SteeringMode::Prefix,
            Window::AllPositions => v1::SteeringMode::AllPositions,
            Window::Generated => v1::SteeringMode::GeneratedOnly,
            Window::Range { .. } => v1::SteeringMode::Range,
        }
    }
}

impl From<Op> for v1::SteeringOp {
    fn from(o: Op) -> Self {
        match o {
            Op::Add => v1::SteeringOp::Add,
            Op::Ablate => v1::SteeringOp::Ablate,
            Op::Clamp { .. } => v1::SteeringOp::Clamp,
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

/// A wire window: `mode` (UNSPECIFIED is PREFIX) with RANGE's `start..end`. `Err` says why it
/// is not one (an unknown mode, an empty range), for the caller to name the field.
pub fn window(mode: i32, start: u32, end: Option<u32>) -> Result<Window, String> {
    match v1::SteeringMode::try_from(mode).map_err(|_| format!("unknown steering mode {mode}"))? {
        v1::SteeringMode::Unspecified | v1::SteeringMode::Prefix => Ok(Window::Prefix),
        v1::SteeringMode::AllPositions => Ok(Window::AllPositions),
        v1::SteeringMode::GeneratedOnly => Ok(Window::Generated),
        v1::SteeringMode::Range => match end {
            Some(e) if e <= start => Err(format!("window_end {e} must be greater than window_start {start}")),
            end => Ok(Window::Range { start: start as usize, end: end.map(|e| e as usize) }),
        },
    }
}

/// The wire fields of a window: mode, window_start, window_end.
pub fn wire_window(w: Window) -> (i32, u32, Option<u32>) {
    let mode = v1::SteeringMode::from(w) as i32;
    match w {
        Window::Range { start, end } => (mode, start as u32, end.map(|e| e as u32)),
        _ => (mode, 0, None),
    }
}

/// A wire op (UNSPECIFIED is ADD) with CLAMP's value; `Err` says why it is not one.
pub fn op(op: i32, clamp_value: f32) -> Result<Op, String> {
    match v1::SteeringOp::try_from(op).map_err(|_| format!("unknown steering op {op}"))? {
        v1::SteeringOp::Unspecified | v1::SteeringOp::Add => Ok(Op::Add),
        v1::SteeringOp::Ablate => Ok(Op::Ablate),
        v1::SteeringOp::Clamp if clamp_value.is_finite() => Ok(Op::Clamp { value: clamp_value }),
        v1::SteeringOp::Clamp => Err(format!("clamp_value {clamp_value} is not finite")),
    }
}

/// The wire fields of an op: op, clamp_value.
pub fn wire_op(o: Op) -> (i32, f32) {
    let value = match o {
        Op::Clamp { value } => value,
        _ => 0.0,
    };
    (v1::SteeringOp::from(o) as i32, value)
}

impl v1::TensorHeader {
    /// Sets the steering fields (mode, range, op, clamp value) of a steering tensor's header.
    pub fn with_steering(mut self, w: Window, o: Op) -> Self {
        (self.mode, self.window_start, self.window_end) = wire_window(w);
        (self.op, self.clamp_value) = wire_op(o);
        self
    }

    /// The window of a steering tensor's header.
    pub fn steering_window(&self) -> Result<Window, String> {
        window(self.mode, self.window_start, self.window_end)
    }

    /// The op of a steering tensor's header.
    pub fn steering_op(&self) -> Result<Op, String> {
        op(self.op, self.clamp_value)
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
    fn every_kind_point_window_and_op_round_trips_and_unspecified_is_the_default() {
        for kind in HookKind::ALL {
            assert_eq!(hook_kind(v1::Hook::from(kind) as i32), Some(kind));
            let p = kind.at(7);
            assert_eq!(v1::HookPoint::from(p).point(), Some(p));
        }
        for w in Window::KINDS.into_iter().chain([Window::Range { start: 2, end: Some(5) }]) {
            let (m, a, b) = wire_window(w);
            assert_eq!(window(m, a, b), Ok(w));
        }
        for o in [Op::Add, Op::Ablate, Op::Clamp { value: 4.5 }] {
            let (k, v) = wire_op(o);
            assert_eq!(op(k, v), Ok(o));
        }
        assert!(window(v1::SteeringMode::Range as i32, 5, Some(5)).unwrap_err().contains("window_end"));
        assert!(op(v1::SteeringOp::Clamp as i32, f32::NAN).is_err());
        assert_eq!(op(v1::SteeringOp::Unspecified as i32, 0.0), Ok(Op::Add));
        assert_eq!(hook_kind(v1::Hook::Unspecified as i32), Some(HookKind::default()));
        assert_eq!(window(v1::SteeringMode::Unspecified as i32, 0, None), Ok(Window::default()));
        assert_eq!(hook_kind(99), None);
        assert!(window(-1, 0, None).is_err());
    }
}
