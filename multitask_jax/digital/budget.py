"""The communication budget, defined once for analog JSCC and for the separated digital scheme.

The multi-task paper (section V-C) compares methods whose "communication overhead ... is bounded by
20 Kbits". We read this as a bound on the bits that describe what goes over the air, per image:

- analog JSCC: k complex channel uses carry 2k real numbers, each counted as a float32, so
  bits = 64 k (the accounting of `multitask_jax.channel_budget.overhead_bits`);
- digital (JPEG + LDPC + QAM): k channel uses carry k * Q_m coded bits (Q_m = log2 M bits per QAM
  symbol), so bits = Q_m k, of which R * Q_m k are source (JPEG) bits at LDPC code rate R.

Why this reading: it is the only one under which both schemes are measured in bits, as the paper
words it, and it is the one the JSCC side already uses. Its consequence must be stated next to any
result: at 20,000 bits a 16-QAM link gets 5,000 channel uses and JSCC gets at most 312, so the
digital baseline is granted 16x the channel uses (and 16x the energy at equal SNR). A second,
stricter reading, equal channel uses, is available as `Budget.from_channel_uses`; report which one a
table uses (`Budget.reading`). 1 Kbit = 1,000 bits.
"""

from __future__ import annotations

import dataclasses
import math

KBIT = 1000
PAPER_BUDGET_BITS = 20 * KBIT
ANALOG_BITS_PER_REAL = 32  # float32, as multitask_jax.channel_budget.BITS_PER_REAL
QAM_ORDERS = {"qpsk": 2, "16qam": 4, "64qam": 6}


def bits_per_symbol(modulation: str) -> int:
    """Q_m: coded bits per complex channel use for 'qpsk', '16qam' or '64qam'."""
    try:
        return QAM_ORDERS[modulation.lower()]
    except KeyError:
        raise ValueError(f"unknown modulation {modulation!r}; choose one of {tuple(QAM_ORDERS)}") from None


def analog_bits(channel_uses: int, bits_per_real: int = ANALOG_BITS_PER_REAL) -> int:
    """Bits an analog JSCC scheme is charged for k channel uses: 2 reals per use."""
    return 2 * int(channel_uses) * int(bits_per_real)


def digital_bits(channel_uses: int, modulation: str) -> int:
    """Coded bits on the channel for k QAM symbols: Q_m k."""
    return int(channel_uses) * bits_per_symbol(modulation)


@dataclasses.dataclass(frozen=True)
class Budget:
    """A per-image bound, in bits (`bits`) and the channel uses it grants each scheme.

    reading: 'bits' (the paper's bound on transmitted bits; the default) or 'channel_uses'
    (every scheme gets the same k, the stricter comparison).
    """

    bits: int = PAPER_BUDGET_BITS
    reading: str = "bits"
    channel_uses_bound: int | None = None

    def __post_init__(self):
        if self.reading not in ("bits", "channel_uses"):
            raise ValueError(f"unknown budget reading {self.reading!r}; use 'bits' or 'channel_uses'")
        if self.reading == "channel_uses" and not self.channel_uses_bound:
            raise ValueError("reading='channel_uses' needs channel_uses_bound; build it with Budget.from_channel_uses")

    @classmethod
    def from_channel_uses(cls, channel_uses: int) -> Budget:
        """Equal channel uses for every scheme (bits then depend on the scheme)."""
        return cls(bits=analog_bits(channel_uses), reading="channel_uses", channel_uses_bound=int(channel_uses))

    def analog_channel_uses(self, bits_per_real: int = ANALOG_BITS_PER_REAL) -> int:
        """The most channel uses an analog JSCC may take."""
        if self.reading == "channel_uses":
            return self.channel_uses_bound
        return self.bits // (2 * bits_per_real)

    def digital_channel_uses(self, modulation: str) -> int:
        """The most QAM symbols the digital scheme may send."""
        if self.reading == "channel_uses":
            return self.channel_uses_bound
        return self.bits // bits_per_symbol(modulation)

    def coded_bits(self, modulation: str) -> int:
        """E: coded bits on the channel, Q_m * digital_channel_uses."""
        return digital_bits(self.digital_channel_uses(modulation), modulation)

    def source_bits(self, modulation: str, code_rate: float) -> int:
        """The most source bits at code rate R: floor(R * E)."""
        if not 0 < code_rate <= 1:
            raise ValueError(f"code rate must be in (0, 1], got {code_rate}")
        return math.floor(code_rate * self.coded_bits(modulation))

    def describe(self, modulation: str, code_rate: float) -> dict:
        """A JSON-able summary for result tables."""
        return {
            "reading": self.reading,
            "budget_bits": self.bits,
            "modulation": modulation,
            "code_rate": code_rate,
            "channel_uses": self.digital_channel_uses(modulation),
            "coded_bits": self.coded_bits(modulation),
            "source_bits": self.source_bits(modulation, code_rate),
            "analog_channel_uses": self.analog_channel_uses(),
        }
