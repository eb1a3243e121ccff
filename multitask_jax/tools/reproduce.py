"""The multi-task paper on real photos and CamVid on CPU: train our system and the five baselines, evaluate, publish.

    python -m multitask_jax.tools.reproduce --data=DIR --workdir=DIR --out=docs/results/multitask_cpu \
        [--jobs=a,b] [--train_only | --publish_only]

DIR holds `photos/` (natural photos, sub-folders CSet5, CSet14, CBSD68, CSun_Hays80, CUrban100) and `camvid/`
(camvid_{train,val,test}.npz); see multitask_jax/data.py's photos: and camvid: sources. Every job is
`launch.py --config=configs/<config>.py:cpu` in its own process (the `cpu` presets: 128 x 128 training crops,
Rayleigh block fading, 0..20 dB step 4, equal channel uses), logging to WORKDIR/<workdir>/log.txt:

    multitask_recon       ours, reconstruction stage (WORKDIR/multitask)
    multitask_seg         ours, segmentation on the reconstruction stage's frozen transmitter (same workdir)
    multitask_recon_awgn  ours, both stages' checkpoints evaluated again over AWGN (WORKDIR/multitask/eval_awgn,
    multitask_seg_awgn    method 'multitask_awgn')
    mt_deepjscc, mt_adjscc, mt_witt, mt_deeplab_jscc, mt_fcn_digital   the baselines, each in its own workdir

The job machinery is casc_jax.tools.reproduce's (resume, archive, rerun only what a pending job needs): a finished
job's record (`job_<name>.json`: command, commit, wall time), log and small outputs (each task's
metrics.json / metrics.csv, the segmentation grids.npz, the figures of its sweep) are copied to OUT/jobs/<job>/,
and OUT is published from there by `multitask_jax.tools.results`: metrics.csv, fig4/fig5/fig7 PNGs and results.md.
Delete OUT/jobs/<job> to run that job again.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping, Sequence

from casc_jax.tools import reproduce as casc_reproduce
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION

PHOTOS, CAMVID = "photos", "camvid"
CAMVID_FILES = ("camvid_train.npz", "camvid_val.npz")
PHOTO_EVAL = "CUrban100"  # the large photos (about 1024 x 768): evaluated at 224x224 and 768x512 (Figs. 4, 5)


@dataclasses.dataclass(frozen=True)
class MTJob(casc_reproduce.Job):
    """A multi-task job: its workdir (`workdir`, default the config), the tasks it evaluates, the folder its
    sweep writes (`eval_dir`), which data each source field reads (`data`: config field -> 'photos' or
    'camvid'); `flags` as in Job. Its record and archive folder are named after the job, since several jobs
    share one workdir."""

    workdir: str = ""
    tasks: tuple[str, ...] = (RECONSTRUCTION,)
    eval_dir: str = "eval"
    data: tuple[tuple[str, str], ...] = (("data.source", PHOTOS),)

    @property
    def folder(self) -> str:
        return self.workdir or self.config

    @property
    def archive_folder(self) -> str:
        return self.name

    @property
    def record(self) -> str:
        return f"job_{self.name}.json"

    @property
    def outputs(self) -> tuple[str, ...]:
        files = ["log.txt"]
        for task in self.tasks:
            folder = f"{self.eval_dir}/{task}"
            files += [f"{folder}/metrics.json", f"{folder}/metrics.csv"]
            if task == RECONSTRUCTION:  # the grids at 768 x 512 are megabytes: the figures only
                files += [f"{folder}/psnr_vs_snr.png", f"{folder}/samples_224x224.png", f"{folder}/samples_768x512.png"]
            else:
                files += [f"{folder}/grids.npz", f"{folder}/miou_vs_snr.png", f"{folder}/masks.png"]
        return tuple(files)

    @property
    def reads(self) -> set[str]:
        shared = SEGMENTATION in self.tasks and self.config == "multitask_seg"  # the frozen transmitter
        return super().reads | ({self.folder} if shared else set())

    def data_flags(self, source: Mapping[str, str]) -> list[str]:
        return [f"--config.{field}={source[kind]}" for field, kind in self.data]


_SEG = (("data.source", CAMVID),)
_AWGN = {"channel.kind": "awgn", "eval.dir": "eval_awgn", "eval.method": "multitask_awgn"}
JOBS = (
    MTJob("multitask_recon", "multitask_recon", workdir="multitask"),
    MTJob("multitask_seg", "multitask_seg", workdir="multitask", tasks=(SEGMENTATION,), data=_SEG),
    MTJob("mt_deepjscc", "mt_deepjscc"),
    MTJob("mt_adjscc", "mt_adjscc"),
    MTJob("mt_witt", "mt_witt"),
    MTJob("mt_deeplab_jscc", "mt_deeplab_jscc", tasks=(SEGMENTATION,), data=_SEG),
    MTJob(
        "mt_fcn_digital",
        "mt_fcn_digital",
        tasks=(SEGMENTATION, RECONSTRUCTION),
        data=_SEG + (("recon_data.source", PHOTOS),),
    ),
    MTJob(
        "multitask_recon_awgn", "multitask_recon", mode="eval", workdir="multitask", eval_dir="eval_awgn", flags=_AWGN
    ),
    MTJob(
        "multitask_seg_awgn",
        "multitask_seg",
        mode="eval",
        workdir="multitask",
        tasks=(SEGMENTATION,),
        eval_dir="eval_awgn",
        data=_SEG,
        flags=_AWGN,
    ),
)


def data_sources(data: str) -> dict[str, str]:
    """`--data` DIR -> {'photos': the photos: source (Urban100 evaluates; the rest and CamVid's train photos
    train), 'camvid': the camvid: source}; FileNotFoundError (one line) when DIR lacks what they read."""
    root = os.path.abspath(os.path.expanduser(data))
    photos, camvid = os.path.join(root, PHOTOS), os.path.join(root, CAMVID)
    missing = [
        p
        for p in (os.path.join(photos, PHOTO_EVAL), *(os.path.join(camvid, f) for f in CAMVID_FILES))
        if not os.path.exists(p)
    ]
    if missing:
        raise FileNotFoundError(
            f"--data={data}: {', '.join(missing)} not found; pass the folder holding photos/ (with {PHOTO_EVAL}/) "
            f"and camvid/ ({' and '.join(CAMVID_FILES)})"
        )
    return {PHOTOS: f"photos:{photos},eval={PHOTO_EVAL},camvid={camvid}", CAMVID: f"camvid:{camvid}"}


def main(argv: Sequence[str] | None = None) -> int:
    from multitask_jax.tools import results

    return casc_reproduce.main(
        argv,
        jobs=JOBS,
        source_of=data_sources,
        publish=results.publish,
        workdir=os.path.join("runs", "multitask_cpu"),
        out=os.path.join("docs", "results", "multitask_cpu"),
        description=__doc__.splitlines()[0],
        data_help="folder holding photos/ and camvid/ (the shared data folder)",
    )


if __name__ == "__main__":
    sys.exit(main())
