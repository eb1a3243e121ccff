"""The communication budget: one accounting for analog JSCC and the digital link."""

import pytest

from multitask_jax import channel_budget
from multitask_jax.digital import budget


def test_analog_accounting_matches_jscc():
    for k in (1, 147, 294, 312):
        assert budget.analog_bits(k) == channel_budget.overhead_bits(k)
    b = budget.Budget()
    assert b.bits == 20_000 and b.reading == "bits"
    assert b.analog_channel_uses() == 312  # 312 * 64 = 19,968 <= 20,000 < 313 * 64
    assert budget.analog_bits(b.analog_channel_uses()) <= b.bits < budget.analog_bits(b.analog_channel_uses() + 1)


@pytest.mark.parametrize("modulation, qm, uses", [("qpsk", 2, 10_000), ("16qam", 4, 5_000), ("64qam", 6, 3_333)])
def test_digital_accounting(modulation, qm, uses):
    b = budget.Budget()
    assert budget.bits_per_symbol(modulation) == qm
    assert b.digital_channel_uses(modulation) == uses
    assert b.coded_bits(modulation) == qm * uses <= 20_000
    assert b.source_bits(modulation, 0.5) == (qm * uses) // 2
    summary = b.describe(modulation, 0.5)
    assert summary["coded_bits"] == budget.digital_bits(uses, modulation)


def test_equal_channel_uses_reading():
    b = budget.Budget.from_channel_uses(294)
    assert b.reading == "channel_uses" and b.bits == 18_816
    assert b.analog_channel_uses() == 294
    assert all(b.digital_channel_uses(m) == 294 for m in budget.QAM_ORDERS)
    assert b.coded_bits("16qam") == 4 * 294


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="choose one of"):
        budget.bits_per_symbol("256qam")
    with pytest.raises(ValueError, match="from_channel_uses"):
        budget.Budget(reading="channel_uses")
    with pytest.raises(ValueError, match="code rate"):
        budget.Budget().source_bits("qpsk", 1.5)
