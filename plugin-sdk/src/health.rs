//! Health policy: raw check results in, up/down and weight out (`lb_health`).

/// What a policy decides for one backend: the host applies it to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthVerdict {
    pub up: bool,
    /// Effective weight; 0 drains the backend while keeping it up.
    pub weight: u16,
}

impl HealthVerdict {
    /// Bit 16 of the encoding.
    pub const UP_BIT: u32 = 1 << 16;

    /// Bits 0..16 weight, bit 16 up, bits 17..32 zero.
    pub const fn encode(self) -> u32 {
        self.weight as u32 | if self.up { HealthVerdict::UP_BIT } else { 0 }
    }

    /// Reads the host's encoding of the current state, ignoring reserved bits.
    pub const fn decode(v: u32) -> HealthVerdict {
        HealthVerdict { up: v & HealthVerdict::UP_BIT != 0, weight: v as u16 }
    }
}

/// One health-check result and the history the host keeps for the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthInput {
    /// Row index of the backend (its row may be read for load figures).
    pub index: u32,
    /// The check just passed.
    pub ok: bool,
    /// Time the check took (for a failure: until it failed or timed out).
    pub latency_us: u32,
    /// Consecutive passed checks, this one included (0 if it failed).
    pub successes: u32,
    /// Consecutive failed checks, this one included (0 if it passed).
    pub failures: u32,
    /// The state the host currently applies.
    pub current: HealthVerdict,
    /// The weight from the configuration.
    pub configured_weight: u16,
}

impl HealthInput {
    /// Decodes the `lb_health` arguments; out-of-range values saturate.
    pub const fn from_abi(index: u32, ok: u32, latency_us: u32, successes: u32, failures: u32, current: u32, configured_weight: u32) -> HealthInput {
        HealthInput {
            index,
            ok: ok != 0,
            latency_us,
            successes,
            failures,
            current: HealthVerdict::decode(current),
            configured_weight: if configured_weight > u16::MAX as u32 { u16::MAX } else { configured_weight as u16 },
        }
    }

    /// The host's native policy (what applies when a plugin has no
    /// `lb_health`), with the VIP's rise and fall counters: an up backend
    /// goes down after `fall` consecutive failures, a down one comes up
    /// after `rise` consecutive successes, the weight is the configured one.
    pub const fn rise_fall(&self, rise: u32, fall: u32) -> HealthVerdict {
        let up = if self.current.up { self.failures < fall } else { self.successes >= rise };
        HealthVerdict { up, weight: self.configured_weight }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(ok: bool, successes: u32, failures: u32, up: bool) -> HealthInput {
        HealthInput::from_abi(0, ok as u32, 900, successes, failures, HealthVerdict { up, weight: 7 }.encode(), 9)
    }

    #[test]
    fn encoding_round_trips_and_ignores_reserved_bits() {
        for v in [HealthVerdict { up: true, weight: 65535 }, HealthVerdict { up: false, weight: 0 }, HealthVerdict { up: true, weight: 0 }] {
            assert_eq!(HealthVerdict::decode(v.encode()), v);
            assert_eq!(v.encode() >> 17, 0);
        }
        assert_eq!(HealthVerdict::decode(0xfffe_0003), HealthVerdict { up: false, weight: 3 });
    }

    #[test]
    fn from_abi_saturates_weight_and_reads_ok_as_nonzero() {
        let i = HealthInput::from_abi(3, 5, 1, 1, 0, HealthVerdict::UP_BIT | 4, 1 << 20);
        assert!(i.ok);
        assert_eq!(i.configured_weight, 65535);
        assert_eq!(i.current, HealthVerdict { up: true, weight: 4 });
    }

    #[test]
    fn rise_fall_needs_the_full_streak() {
        let (rise, fall) = (2, 3);
        assert!(input(false, 0, 2, true).rise_fall(rise, fall).up);
        assert!(!input(false, 0, 3, true).rise_fall(rise, fall).up);
        assert!(!input(true, 1, 0, false).rise_fall(rise, fall).up);
        assert!(input(true, 2, 0, false).rise_fall(rise, fall).up);
        // The configured weight is restored, whatever the current one.
        assert_eq!(input(true, 2, 0, false).rise_fall(rise, fall).weight, 9);
    }
}
