"""The paper's claims as results.md checks them: verdicts follow the numbers, missing jobs are 'not measured'."""

from casc_jax.tools import results


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


def test_diffsc_refines_its_condition_only_when_at_or_above_it_at_every_snr():
    mse = [_rec("deepjscc_mse_cr48", "1/48", s, p, 0.15) for s, p in ((5.0, 20.1), (20.0, 23.3))]
    claim = "DiffSC (v-prediction) PSNR at or above the DeepJSCC (MSE) output it refines at every SNR, CR 1/48"
    assert _verdicts(mse)[claim] is None
    v = [_rec("diffsc_cr48_v", "1/48", 5.0, 20.1, 0.2), _rec("diffsc_cr48_v", "1/48", 20.0, 23.9, 0.1)]
    assert _verdicts(mse + v)[claim] is True
    v[1]["psnr"] = 23.2
    held, numbers = next((h, d) for c, h, d in results.claims(mse + v) if c == claim)
    assert held is False and numbers == "PSNR 5 dB: 20.10 vs 20.10, 20 dB: 23.20 vs 23.30"
    assert _verdicts(mse + v[1:])[claim] is False  # the 5 dB DiffSC row missing does not hide the 20 dB one
    assert _verdicts(mse[1:] + v)[claim] is None  # a DeepJSCC row missing: not measured


def _quality(rows, best):
    keys = ("sampler", "ms_per_image", "psnr_vs_source", "lpips_vs_source", "psnr_vs_ddpm", "lpips_vs_ddpm")
    return {"num_images": 4, "snr_db": 20.0, "device": "cpu", "fastest_within_tolerance": best,
            "rows": [dict(zip(keys, r)) for r in rows]}


def test_quality_table_names_the_fast_setting_or_says_there_is_none():
    ddpm = ("ddpm", 1600.0, 16.2, 0.103, 100.0, 0.0)
    within = ("dpmpp_2m 10 steps (logsnr)", 28.0, 16.0, 0.105, 30.0, 0.01)
    table = results.quality_table(_quality([ddpm, within], within[0]))
    assert "within 0.3 dB PSNR and 0.01 LPIPS of the 1000-step DDPM: **dpmpp_2m 10 steps (logsnr)**" in table
    outside = ("dpmpp_2m 10 steps (logsnr)", 28.0, 15.5, 0.107, 17.4, 0.05)
    table = results.quality_table(_quality([ddpm, outside, ("ddim 5 steps", 17.0, 14.4, 0.12, 15.9, 0.06)], "ddpm"))
    assert "No fast sampler stays within" in table
    assert "dpmpp_2m 10 steps (logsnr), is 0.70 dB below it at 28.0 against 1600.0 ms/image" in table
