"""The CIFAR-10 reproduction on CPU: train every CASC-paper system, evaluate, compare, publish.

    python -m casc_jax.tools.reproduce --data=DIR [--workdir=runs/cifar10_cpu] [--out=docs/results/cifar10_cpu]

DIR holds the CIFAR-10 JPEG archives (cifar10_train_50k_jpeg.npz, cifar10_test_10k_jpeg.npz; see
`casc_jax.data`'s npz source), or `--data=tfds` reads the prepared TFDS cifar10. Every job is
`launch.py --config=configs/<job>.py:cpu` in its own process, logging to WORKDIR/<job>/log.txt; a finished
job leaves WORKDIR/<job>/job_<mode>.json, an unfinished one resumes from its last checkpoint. After the
CR 1/48 training jobs: `--mode=quality` and `--mode=benchmark` (beside DiffSC) on CASC CR 1/48; then CR 1/96;
then OUT/ with metrics.csv, the comparison figures and results.md (the command, commit, wall time per job,
data, tables and the paper's claims checked).

Results travel with the repository, checkpoints do not: each finished job's small outputs (its record,
eval/metrics.json and reconstructions, the benchmark reports) are copied to OUT/jobs/<config>/, and a job
found there is not run again unless a job still to run needs its checkpoints (then it is retrained). The
results are published from OUT/jobs, so runs made on different machines or days add up. Delete
OUT/jobs/<config> to run that job again.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from casc_jax import cli
from casc_jax.tools import results
from casc_jax.tools.results import REPO, git_commit
from configs import casc_base

log = logging.getLogger(__name__)

NPZ_FILES = {"train": "cifar10_train_50k_jpeg.npz", "test": "cifar10_test_10k_jpeg.npz"}


@dataclasses.dataclass(frozen=True)
class Job:
    """One `launch.py` run: a config (':cpu' preset), its mode and the workdirs it builds on.

    The generic parts (`folder`, `record`, `archive_folder`, `outputs`, `reads`, `data_flags`) are what the
    job machinery below reads; a reproduction of another system (multitask_jax.tools.reproduce) subclasses Job to
    change them. Here a job's workdir and archive folder are both named after its config.
    """

    name: str
    config: str
    mode: str = "train"
    uses: Mapping[str, str] = dataclasses.field(default_factory=dict)  # config field -> job whose workdir it takes
    flags: Mapping[str, object] = dataclasses.field(default_factory=dict)  # further --config.FIELD=VALUE overrides
    record_name: str = ""  # its record's file name in the workdir; default job_<mode>.json

    @property
    def record(self) -> str:
        """The record's file name: job_<mode>.json, or `record_name` for a second job of the same config and mode
        (the distillation job is a 'train' of casc_cr48's workdir beside casc_cr48's own)."""
        return self.record_name or f"job_{self.mode}.json"

    @property
    def main(self) -> bool:
        """Whether this is its config's own job of its mode (the one whose eval/metrics.json the tables read)."""
        return not self.record_name

    @property
    def folder(self) -> str:
        """Its workdir under the reproduction's WORKDIR."""
        return self.config

    @property
    def archive_folder(self) -> str:
        """Where its outputs are kept under OUT/jobs."""
        return self.config

    @property
    def outputs(self) -> tuple[str, ...]:
        """Its small outputs kept in the archive, relative to its workdir."""
        return ARCHIVED[self.mode]

    @property
    def reads(self) -> set[str]:
        """The workdirs (folders) whose checkpoints it reads."""
        return set(self.uses.values()) | ({self.folder} if self.mode != "train" else set())

    def data_flags(self, source) -> list[str]:
        return [f"--config.data.source={source}"]

    def command(self, root: str, source) -> list[str]:
        args = [
            sys.executable,
            os.path.join(REPO, "launch.py"),
            f"--config={os.path.join(REPO, 'configs', self.config)}.py:cpu",
            f"--workdir={os.path.join(root, self.folder)}",
            f"--mode={self.mode}",
            *self.data_flags(source),
        ]
        args += [f"--config.{field}={os.path.join(root, job)}" for field, job in self.uses.items()]
        return args + [f"--config.{field}={value}" for field, value in self.flags.items()]


_AE = {"train.stage1.workdir": "casc_cr48"}  # CR 1/96 and the ablation reuse CR 1/48's autoencoder
# Progressive distillation of the trained casc_cr48 (configs/casc_base.py `_cpu`: an 8-step teacher, students of
# 4, 2 and 1 steps): a 'train' of its workdir, where stages 1 and 2 are done and resume as they are, so only the
# rounds train (into WORKDIR/distill<r>); no evaluation sweep (its students are measured by --mode=quality).
DISTILL_FLAGS = {"train.distill.rounds": casc_base.CPU_DISTILL_ROUNDS, "train.evaluate": False}
# In the order they run: the CR 1/48 comparison, the students, the sampler quality table and speed, CR 1/96,
# then CASC with a v-prediction denoiser on the same autoencoder, its students and their quality, and DiffSC with
# a v-prediction U-Net on the same DeepJSCC-MSE.
JOBS = (
    Job("deepjscc_mse_cr48", "deepjscc_mse_cr48"),
    Job("casc_cr48", "casc_cr48"),
    Job("casc_cr48_nocan", "casc_cr48_nocan", uses=_AE),
    Job("deepjscc_lpips_cr48", "deepjscc_lpips_cr48"),
    Job("diffsc_cr48", "diffsc_cr48", uses={"diffsc.deepjscc_workdir": "deepjscc_mse_cr48"}),
    Job("distill_casc_cr48", "casc_cr48", flags=DISTILL_FLAGS, record_name="job_distill.json"),
    Job("quality_casc_cr48", "casc_cr48", mode="quality"),  # with the students at 1, 2 and 4 steps when trained
    Job("speed_casc_cr48", "casc_cr48", mode="benchmark"),  # beside DiffSC's receiver (benchmark.diffsc_config)
    Job("casc_cr96", "casc_cr96", uses=_AE),
    Job("deepjscc_mse_cr96", "deepjscc_mse_cr96"),
    Job("deepjscc_lpips_cr96", "deepjscc_lpips_cr96"),
    Job("casc_cr48_v", "casc_cr48_v", uses=_AE),  # every job of a config names the workdirs that config reads
    Job("distill_casc_cr48_v", "casc_cr48_v", uses=_AE, flags=DISTILL_FLAGS, record_name="job_distill.json"),
    Job("quality_casc_cr48_v", "casc_cr48_v", mode="quality", uses=_AE),
    Job("diffsc_cr48_v", "diffsc_cr48_v", uses={"diffsc.deepjscc_workdir": "deepjscc_mse_cr48"}),
)


def data_source(data: str) -> str:
    """`--data` -> a data.source string: 'tfds' -> tfds:cifar10, a folder -> the npz archives in it."""
    if data == "tfds":
        return "tfds:cifar10"
    paths = {split: os.path.join(os.path.abspath(data), name) for split, name in NPZ_FILES.items()}
    missing = [p for p in paths.values() if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"--data={data}: {', '.join(missing)} not found; pass the folder holding {' and '.join(NPZ_FILES.values())}"
            " (the CIFAR-10 JPEG archives), or --data=tfds for a prepared TFDS cifar10"
        )
    return "npz:" + ",".join(f"{split}={path}" for split, path in paths.items())


def _record_path(root: str, job: Job) -> str:
    return os.path.join(root, job.folder, job.record)


def _archived_record(archive: str, job: Job) -> str:
    return os.path.join(archive, job.archive_folder, job.record)


# A job's outputs kept in OUT/jobs/<config>/ (paths relative to its workdir), by mode.
ARCHIVED = {
    "train": ("eval/metrics.json", "eval/reconstructions.npz"),
    "quality": ("benchmark_quality.json",),
    "benchmark": ("benchmark.json",),
}


def archive_job(job: Job, root: str, archive: str) -> bool:
    """Copy a finished job's record and small outputs (`job.outputs`) from its workdir to
    ARCHIVE/<archive folder>/ (here ARCHIVE/<config>/); False if unfinished."""
    if not os.path.exists(_record_path(root, job)):
        return False
    for name in (job.record, *job.outputs):
        source, target = os.path.join(root, job.folder, name), os.path.join(archive, job.archive_folder, name)
        if os.path.exists(source):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target)
    return True


def needs(later: Job, job: Job) -> bool:
    """Whether `later` reads `job`'s checkpoints (its workdir through `uses`, or the same workdir trained: a second
    'train' of a workdir, the distillation job, builds on its config's own; its students serve the quality job)."""
    if not job.main:  # the students: read by --mode=quality of the same workdir only
        return later.folder == job.folder and later.mode == "quality"
    same = later.config == job.config and later.folder == job.folder and later != job
    return job.mode == "train" and (job.folder in later.reads or same)


def to_run(jobs: Sequence[Job], archive: str) -> list[Job]:
    """The jobs to run: those not archived, and archived ones whose checkpoints a job still to run needs
    (`run_job` skips those whose workdir already holds them)."""
    pending = [j for j in jobs if not os.path.exists(_archived_record(archive, j))]
    return [j for j in jobs if j in pending or any(needs(p, j) for p in pending)]


def run_job(job: Job, root: str, source) -> dict:
    """Run `job` unless it finished before; its output goes to WORKDIR/<config>/log.txt. Returns its record."""
    path = _record_path(root, job)
    if os.path.exists(path):
        with open(path) as f:
            record = json.load(f)
        log.info(f"[reproduce] {job.name}: done before ({record['seconds'] / 60:.1f} min), skipped")
        return record
    workdir = os.path.join(root, job.folder)
    os.makedirs(workdir, exist_ok=True)
    log.info(f"[reproduce] {job.name}: running, log in {workdir}/log.txt")
    started = time.time()
    with open(os.path.join(workdir, "log.txt"), "a") as log_file:
        log_file.write(f"\n$ {' '.join(job.command(root, source))}\n")
        log_file.flush()
        proc = subprocess.Popen(
            job.command(root, source), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in proc.stdout:
            log_file.write(line)
            log_file.flush()
            if line.startswith("["):  # our own progress lines, not library logging
                log.info(f"  {job.name} {line.rstrip()}")
        code = proc.wait()
    seconds = time.time() - started
    if code:
        raise RuntimeError(f"{job.name} failed (exit {code}) after {seconds / 60:.1f} min; see {workdir}/log.txt")
    record = {
        "job": job.name,
        "mode": job.mode,
        "seconds": round(seconds, 1),
        "commit": git_commit(REPO),
        "command": job.command(root, source),
    }
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return record


def main(
    argv: Sequence[str] | None = None,
    *,
    jobs: Sequence[Job] = JOBS,
    source_of: Callable[[str], object] = None,
    publish: Callable = None,
    workdir: str = os.path.join("runs", "cifar10_cpu"),
    out: str = os.path.join("docs", "results", "cifar10_cpu"),
    description: str | None = None,
    data_help: str = "folder of the CIFAR-10 npz archives, or 'tfds'",
) -> int:
    """The resumable reproduction command over `jobs`: `source_of(--data)` gives what each job's
    `data_flags` reads (a FileNotFoundError / ValueError is one `error:` line, exit 2), `publish(archive, out,
    jobs, args, source)` writes OUT. The defaults are CIFAR-10's; multitask_jax.tools.reproduce passes its own."""
    source_of = source_of or data_source
    publish = publish or results.publish
    parser = argparse.ArgumentParser(description=description or __doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--workdir", default=workdir)
    parser.add_argument("--out", default=out)
    parser.add_argument("--jobs", default="", help="comma-separated job names to run (default: all, in order)")
    parser.add_argument("--train_only", action="store_true", help="run the jobs, do not write OUT")
    parser.add_argument("--publish_only", action="store_true", help="write OUT from the jobs finished so far")
    args = parser.parse_args(argv)
    cli.show_progress()
    try:
        source = source_of(args.data)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = [n for n in args.jobs.split(",") if n]
    unknown = [n for n in names if n not in {j.name for j in jobs}]
    if unknown:
        print(
            f"error: unknown job {', '.join(unknown)}; the jobs are {', '.join(j.name for j in jobs)}", file=sys.stderr
        )
        return 2
    root, out = os.path.abspath(args.workdir), os.path.abspath(args.out)
    archive = os.path.join(out, "jobs")
    chosen = [j for j in jobs if not names or j.name in names] if not args.publish_only else []
    started = time.time()
    runs = to_run(chosen, archive)
    for job in chosen:
        if job in runs:
            run_job(job, root, source)
        else:
            log.info(f"[reproduce] {job.name}: results in {archive}/{job.archive_folder}, skipped")
    for job in jobs:  # also what an earlier --train_only run finished
        archive_job(job, root, archive)
    if args.train_only:
        return 0

    publish(archive, out, jobs, args, source)
    log.info(f"[reproduce] finished in {(time.time() - started) / 60:.1f} min; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
