"""The paper's claims as results.md checks them: verdicts follow the numbers, missing jobs are 'not measured'."""

from casc_jax import results


def _rec(method, cr, snr, psnr, lpips):
    return {"method": method, "cr": cr, "snr_db": snr, "psnr": psnr, "lpips": lpips}


def _verdicts(records):
    return {claim: holds for claim, holds, _ in results.claims(records)}


def test_claims_follow_the_numbers():
    records = [
        _rec("casc_cr48", "1/48", 20.0, 15.3, 0.109),
        _rec("deepjscc_mse_cr48", "1/48", 20.0, 23.3, 0.149),
        _rec("diffsc_cr48", "1/48", 20.0, 24.0, 0.105),
    ]
    v = _verdicts(records)
    assert v["CASC beats DeepJSCC (MSE) in LPIPS at 20 dB, CR 1/48 (Fig. 5)"] is True
    assert v["CASC beats DeepJSCC (MSE) in PSNR at 20 dB, CR 1/48 (Fig. 5)"] is False
    assert v["CASC is slightly inferior to DiffSC in PSNR at 20 dB, CR 1/48 (Sec. IV-B)"] is True
    assert v[results.COMPARABLE_LPIPS] is True  # 0.109 vs 0.105: +3.8%
    assert v["CASC beats DeepJSCC (LPIPS) in LPIPS at 20 dB, CR 1/48 (Fig. 5)"] is None  # job not finished
    assert v["CASC beats DeepJSCC (MSE) in PSNR at 20 dB, CR 1/96 (Fig. 6)"] is None
    records[2] = _rec("diffsc_cr48", "1/48", 20.0, 24.0, 0.08)
    assert _verdicts(records)[results.COMPARABLE_LPIPS] is False


def test_monotone_claim_per_method():
    records = [_rec("casc_cr48", "1/48", s, p, lp) for s, p, lp in ((5.0, 13.8, 0.12), (10.0, 14.7, 0.11))]
    assert _verdicts(records)["casc_cr48: PSNR rises and LPIPS falls with SNR"] is True
    records.append(_rec("casc_cr48", "1/48", 15.0, 14.0, 0.13))
    assert _verdicts(records)["casc_cr48: PSNR rises and LPIPS falls with SNR"] is False
