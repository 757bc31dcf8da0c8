//! Configuration of a serving process.

use std::time::Duration;

use steer_activation::ActivationConfig;
use steer_generation::GenerationConfig;

/// Which services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Both,
    Activation,
    Generation,
}

impl Role {
    pub fn activation(self) -> bool {
        matches!(self, Role::Both | Role::Activation)
    }

    pub fn generation(self) -> bool {
        matches!(self, Role::Both | Role::Generation)
    }
}

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub role: Role,
    pub activation: ActivationConfig,
    pub generation: GenerationConfig,
    /// How long open streams may run after the shutdown signal.
    pub grace: Duration,
    /// Largest request message (tensor chunks are at most 1 MiB).
    pub max_message_bytes: usize,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            role: Role::Both,
            activation: ActivationConfig::default(),
            generation: GenerationConfig::default(),
            grace: Duration::from_secs(10),
            max_message_bytes: 8 << 20,
        }
    }
}
