"""Each bad input ends with one clear line from rank 0 (what is wrong, what to do), exit code 2, no traceback."""
import contextlib
import subprocess

import pytest
import torch

from conftest import ROOT, hvdfast_cmd, launch_cmd, launcher_env, make_jpeg_tree, run_launcher

SMALL = ["model.name=resnet18", "data.image_size=32", "data.val_resize=32", "data.batch_size=16",
         "data.backend=torchvision", "train.progress=lines", "train.target_top1=0"]


def train(*args, timeout=300):
    return subprocess.run(hvdfast_cmd("train", "--config", "launch/configs/digits-cpu.yaml", *args),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=launcher_env())


@contextlib.contextmanager
def small_tmpfs(folder, size: str, what: str):
    """`folder` (made here) as a tmpfs of `size` while the block runs: a file system that fills up. Skips where
    mounting is not allowed."""
    import os
    if os.geteuid() != 0:
        pytest.skip(f"mounting a small file system for {what} needs root")
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def one_error(p, *needles):
    assert p.returncode == 2, p.stdout[-1500:] + p.stderr[-1500:]
    errors = [line for line in p.stderr.splitlines() if line.startswith("hvdfast: error")]
    assert len(errors) == 1, p.stderr
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in errors[0], errors[0]
    return errors[0]


def test_yaml_that_is_not_a_mapping(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- list\n")
    p = subprocess.run(hvdfast_cmd("train", "--config", str(bad)), capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=launcher_env())
    one_error(p, "must be a YAML mapping")


def test_class_folder_without_images(tmp_path):
    root = make_jpeg_tree(tmp_path / "d", classes=2, per_class={"train": 2, "val": 1})
    (root / "train/c5").mkdir()
    (root / "val/c5").mkdir()
    one_error(train(f"data.dir={root}", f"train.run_dir={tmp_path / 'r'}", *SMALL), "c5' has no images")


def test_fewer_images_than_workers_times_batch(digits_dir, tmp_path):
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path}", *SMALL, "data.batch_size=4096"),
              "fewer than workers x batch = 1 x 4096", "lower data.batch_size")



def test_one_image_per_worker_that_batchnorm_cannot_train_on(digits_dir, tmp_path):
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path}", *SMALL, "data.batch_size=1"),
              "cannot train on one image per worker (data.batch_size=1) at 32 px", "Set data.batch_size to 2")

@pytest.fixture(scope="module")
def trained_run(digits_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    p = train(f"data.dir={digits_dir}", f"train.run_dir={run}", *SMALL, "train.epochs=0.25")
    assert p.returncode == 0, p.stderr[-2000:]
    return run


def test_truncated_and_foreign_checkpoints(trained_run, digits_dir, tmp_path):
    from hvdfast import checkpoint
    good = checkpoint.list_checkpoints(trained_run / "checkpoints")[0]
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:5000])
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path / 'r1'}", *SMALL, f"train.resume={cut}"),
              "cut.pt", "truncated or not an hvdfast checkpoint")
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, foreign)
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path / 'r2'}", *SMALL,
                    f"train.resume={foreign}"), "not an hvdfast checkpoint")
    assert checkpoint.load(good)["step"] > 0       # nothing was damaged


def test_checkpoint_of_another_model(trained_run, digits_dir):
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={trained_run}", *SMALL, "model.name=resnet34"),
              "holds resnet18 with 10 classes", "resnet34 with 10 classes", "train.resume=never")


def test_a_finished_run_is_not_resumed_as_another_or_rerun_as_done(trained_run, digits_dir, tmp_path):
    """Rerunning in a finished run's folder: with nothing left to train it says so (no "done" with 0 img/s), and
    with other data it refuses to continue the old run; neither touches the run's files."""
    import shutil
    before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={trained_run}", *SMALL, "train.epochs=0.25"),
              "nothing left to train", "Raise train.epochs")
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={trained_run}", *SMALL, "train.epochs=0.1"),
              "nothing left to train")
    other = tmp_path / "other"
    shutil.copytree(digits_dir, other)
    one_error(train(f"data.dir={other}", f"train.run_dir={trained_run}", *SMALL, "train.epochs=1"),
              "is a checkpoint of a different run", f"-> '{other}'", "train.resume=never")
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == before


def test_diverging_loss_stops_the_run(digits_dir, tmp_path):
    err = one_error(train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path}", *SMALL, "optim.lr=1.0e+9",
                          "optim.warmup_epochs=0", "train.log_every=1", "train.epochs=0.2"),
                    "loss is NaN/inf", "lower optim.lr")
    assert "resume from the last checkpoint" in err


def test_an_fp16_loss_scale_that_collapses_stops_the_run():
    """fp16 gradients that overflow even unscaled (here: a loss times 1e30, finite in fp32, whose gradient is inf
    once cast to fp16): the loss scaler skips every step and halves its scale, 2^16 at the start, so the weights
    never change while the loss stays finite and the NaN/inf check sees nothing. The run went on to "done"; now it
    stops at the first log interval whose scale is below 1 (step 20 at 4 steps an interval: 1 at step 16 is
    allowed), through the engine and the records a run has."""
    from hvdfast import engine
    from hvdfast.metrics import window_metrics
    from hvdfast.run.fit import TrainingError, check_loss_scale
    torch.manual_seed(0)
    model = torch.nn.Linear(12, 4)
    before = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.randn(8, 12), torch.randint(0, 4, (8,))) for _ in range(40)]
    scales = []

    def on_log(step, window):
        m = window_metrics(window, 1)
        scales.append((step, m["loss_scale"], m["skipped_steps"], m["nonfinite_ranks"]))
        check_loss_scale(m, step)

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.synchronize = lambda: None  # one process, no Horovod: its optimizer's extra methods have nothing to do
    opt.skip_synchronize = contextlib.nullcontext
    with pytest.raises(TrainingError) as err:
        engine.train_epoch(model, opt, iter(batches), steps=40,
                           first_step=0, lr_fn=lambda step: 0.1,
                           criterion=lambda logits, labels: torch.nn.functional.cross_entropy(logits, labels) * 1e30,
                           prec=engine.precision_for("fp16", torch.device("cpu")), log_every=4, on_log=on_log)
    assert scales == [(4 * i, 2.0 ** (16 - 4 * i), 4, 0) for i in range(1, 6)]
    assert str(err.value) == ("the fp16 loss scale fell to 0.0625 by step 20 (4 step(s) skipped in the last log "
                              "interval): the gradients overflow fp16 even unscaled, so no step changes the weights; "
                              "use train.precision=bf16 or fp32 (or lower optim.lr), and resume from the last "
                              "checkpoint.")
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_resume_with_another_global_batch_keeps_images_seen(trained_run, digits_dir, tmp_path):
    import shutil
    run = tmp_path / "copy"
    shutil.copytree(trained_run, run)
    p = train(f"data.dir={digits_dir}", f"train.run_dir={run}", *SMALL, "data.batch_size=32", "train.epochs=0.5")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming with global batch 32 instead of 16" in p.stdout
    # 0.25 epoch of 90 steps at 16 = 22 steps = 352 images = step 11 at batch 32
    assert "352 images seen = step 11" in p.stdout


def test_empty_data_folder(tmp_path):
    (tmp_path / "d/train").mkdir(parents=True)
    (tmp_path / "d/val").mkdir()
    one_error(train(f"data.dir={tmp_path / 'd'}", f"train.run_dir={tmp_path / 'r'}", *SMALL),
              "has no class folders")


@pytest.mark.parametrize("knob, value, needle", [
    ("HOROVOD_CPU_OPERATIONS", "gloo", "HOROVOD_CPU_OPERATIONS=gloo with Horovod's MPI controller"),
    ("HOROVOD_CONTROLLER", "gloo", "HOROVOD_CONTROLLER=gloo under mpirun"),
    ("HOROVOD_CPU_OPERATIONS", "nccl", "HOROVOD_CPU_OPERATIONS=nccl is not one Horovod knows (mpi, gloo, ccl)"),
])
def test_horovod_knobs_that_crash_horovod_under_mpirun(digits_dir, tmp_path, knob, value, needle):
    """Horovod's own knobs pass through to the workers; the pairings of controller and CPU operations that
    Horovod 0.28.1 cannot run (a segfault, an MPI abort) and values it does not know (an abort) are refused before
    hvd.init(), once, by rank 0."""
    p = run_launcher("mpirun", 2, hvdfast_cmd("train", "--config", "launch/configs/digits-cpu.yaml",
                                              f"data.dir={digits_dir}", f"train.run_dir={tmp_path}", *SMALL),
                     env={knob: value})
    one_error(p, needle)
    assert "Segmentation fault" not in p.stderr + p.stdout and "MPI_ERRORS_ARE_FATAL" not in p.stderr


def test_controller_problem_allows_what_the_launchers_set():
    from hvdfast.dist import controller_problem
    horovodrun_gloo = {"HOROVOD_CONTROLLER": "gloo", "HOROVOD_CPU_OPERATIONS": "gloo",
                       "HOROVOD_GLOO_RENDEZVOUS_ADDR": "10.0.0.1", "HOROVOD_SIZE": "2"}
    assert controller_problem(horovodrun_gloo, mpi_built=True) is None
    assert controller_problem({"OMPI_COMM_WORLD_SIZE": "2"}, mpi_built=True) is None          # mpirun
    assert controller_problem({"HOROVOD_CONTROLLER": "mpi", "OMPI_COMM_WORLD_SIZE": "2"}, mpi_built=True) is None
    assert controller_problem({"HOROVOD_CPU_OPERATIONS": "gloo"}, mpi_built=False) is None    # a Gloo-only build
    assert controller_problem({"HOROVOD_CONTROLLER": "gloo", "OMPI_COMM_WORLD_SIZE": "1"}, mpi_built=True) is None
    assert controller_problem({"HOROVOD_CPU_OPERATIONS": "ccl"}, mpi_built=True) is None      # not built: MPI's ops
    assert controller_problem({"HOROVOD_CPU_OPERATIONS": "GLOO"}, mpi_built=True) is not None  # Horovod ignores case
    assert "HOROVOD_CONTROLLER=nccl" in controller_problem({"HOROVOD_CONTROLLER": "nccl"}, mpi_built=True)


def test_horovods_files_go_where_asked_or_are_refused(digits_dir, tmp_path):
    """horovod.timeline and horovod.autotune_log in folders that do not exist yet: the folders are made and Horovod
    writes both there (it would train on without them: the timeline with an error line, the log silently); where a
    folder cannot be made, one line before training."""
    timeline = tmp_path / "new" / "deeper" / "timeline.json"
    log = tmp_path / "other" / "autotune.csv"
    p = train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path / 'r'}", *SMALL, "train.epochs=0.05",
              f"horovod.timeline={timeline}", "horovod.autotune=true", f"horovod.autotune_log={log}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Error opening the Horovod Timeline" not in p.stderr
    assert timeline.read_text().lstrip().startswith("[")  # Horovod's Chrome-trace JSON array
    assert log.read_text().startswith("hierarchical_allreduce,")  # the autotuner's CSV header
    (tmp_path / "file").write_text("")
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path / 'r2'}", *SMALL,
                    f"horovod.timeline={tmp_path / 'file' / 't.json'}"), "t.json (HOROVOD_TIMELINE): File exists")


def test_a_run_folder_rank_0_cannot_write_stops_every_rank_with_one_line(digits_dir, tmp_path):
    """Only rank 0 writes the run folder; the others learn its answer (one broadcast) and stop with it, instead
    of each meeting it as Horovod shutting down under them (a traceback per rank, as it was)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    p = run_launcher("mpirun", 2, hvdfast_cmd("train", "--config", "launch/configs/digits-cpu.yaml",
                                              f"data.dir={digits_dir}", f"train.run_dir={blocker / 'run'}", *SMALL))
    assert one_error(p, f"train.run_dir '{blocker / 'run'}' cannot be written: Not a directory") and \
        "Traceback" not in p.stdout


def test_yaml_mistakes_name_the_line_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [0.1\n")
    for verb in ("train", "study"):
        args = ["--config", str(bad)] if verb == "train" else [str(bad)]
        p = subprocess.run(hvdfast_cmd(verb, *args), capture_output=True, text=True, timeout=120, cwd=ROOT,
                           env=launcher_env())
        what = "config file" if verb == "train" else "study spec"
        assert one_error(p, f"{what} '{bad}' is not valid YAML (line 3, column 1): ")


def test_a_damaged_tuned_file_is_named_with_the_remedy(tmp_path):
    tuned = tmp_path / "tuned.yaml"
    tuned.write_text("horovod: {bucket_mb: 25\n")
    p = train(f"horovod.tuned={tuned}", "--print-config")
    assert one_error(p, f"tuned settings file '{tuned}' is not valid YAML (line 2, column 1): ",
                     "Run hvdfast tune again, or delete the file.")


def test_an_unknown_model_name_names_the_closest(digits_dir, tmp_path):
    p = train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path}", *SMALL, "model.name=resnet5")
    assert one_error(p, "unknown model.name 'resnet5'; did you mean resnet50")


def test_a_checkpoint_that_cannot_be_written_stops_the_run_with_one_line(digits_dir, tmp_path):
    """Checkpoints are written in the background (checkpoint.Writer); a write that fails still ends the run within
    the next checkpoint interval, with the write's own line, and never as "done"."""
    import re
    with small_tmpfs(tmp_path / "run/checkpoints", "64k", "the checkpoints"):
        p = train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path / 'run'}", *SMALL, "train.epochs=0.25",
                  "train.checkpoint_every_steps=2", "train.log_every=1")
    line = one_error(p, "could not write checkpoint", "No space left on device", "no earlier checkpoint exists")
    # what running it again does, read from the run folder (the cli's rerun note), as a lost worker's line says it
    assert line.endswith(f"Free space in {tmp_path / 'run/checkpoints'} (or set train.run_dir elsewhere). Then run "
                         f"the same command again: it starts over, as no checkpoint was written yet "
                         f"(train.checkpoint_every and train.checkpoint_every_steps set how often one is)."), line
    steps = [int(s) for s in re.findall(r"step (\d+)/(?:\d+)", p.stdout)]
    assert steps and max(steps) <= 4, p.stdout  # the step-2 checkpoint failed: stopped by the next one
    assert "SUMMARY" not in p.stdout + p.stderr


def test_records_that_cannot_be_written_stop_every_rank_with_one_line(digits_dir, tmp_path):
    """metrics.jsonl on a full file system (here: a link to /dev/full, which fails every write with ENOSPC) in a
    2-rank job: rank 0 says so in one line; rank 1, whose next collective fails under it, adds no traceback."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").symlink_to("/dev/full")
    p = subprocess.run(hvdfast_cmd("launch", "local", "--np", "2", "--controller", "gloo",
                                   "--config", "launch/configs/digits-cpu.yaml", f"data.dir={digits_dir}",
                                   f"train.run_dir={run}", *SMALL, "train.epochs=0.25", "train.log_every=2"),
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=launcher_env())
    out = p.stdout + p.stderr
    # the job's code is the first exit horovodrun sees: rank 0's 2, or rank 1's 1 when it left first
    assert p.returncode in (1, 2) and "Traceback" not in out and "SUMMARY" not in out, out[-3000:]
    errors = [line for line in out.splitlines() if "hvdfast: error" in line]
    assert errors == [f"[0]<stderr>:hvdfast: error: cannot write {run / 'metrics.jsonl'} (No space left on "
                      f"device). Free space in {run} (or set train.run_dir elsewhere) and run the same command "
                      f"again: it starts over, as no checkpoint was written yet (train.checkpoint_every and "
                      f"train.checkpoint_every_steps set how often one is)."], out[-3000:]


def test_tensorboard_on_a_full_disk_is_one_line_and_training_goes_on(digits_dir, tmp_path):
    """TensorBoard's events fill their file system mid-run (a tmpfs with one free page): one line says the events
    are off, metrics.jsonl keeps every record and the run ends as it would. TensorBoard's writer thread printed a
    traceback, and the next add_scalar raised its error in the training loop, ending the run."""
    import json
    with small_tmpfs(tmp_path / "run/tensorboard", "8k", "the events") as events:
        (events / "fill").write_bytes(bytes(4096))  # one 4 KiB page left: the first events fit, later ones not
        p = train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path / 'run'}", *SMALL, "train.epochs=0.25",
                  "train.log_every=1")
        written = sorted(f.stat().st_size for f in events.iterdir() if f.name.startswith("events."))
    assert p.returncode == 0 and "Traceback" not in p.stdout + p.stderr, p.stdout[-2000:] + p.stderr[-3000:]
    assert written == [4096]  # the events that fitted were written before the disk was full
    lines = [line for line in p.stdout.splitlines() if "TensorBoard" in line]
    assert lines == ["TensorBoard events off from here (No space left on device); metrics.jsonl keeps every record "
                     "(hvdfast plot draws it)"]
    steps = [json.loads(r)["step"] for r in (tmp_path / "run/metrics.jsonl").read_text().splitlines()
             if '"kind": "train"' in r]
    assert steps == list(range(1, 23)) and "SUMMARY" in p.stdout  # 1437 images / 16 x 0.25 = 22 steps


def test_peer_lost_is_horovod_shut_down_or_a_gloo_transport_error_anywhere_in_the_chain():
    from hvdfast.dist import peer_lost
    shut = RuntimeError("Horovod has been shut down. This was caused by an exception on one of the ranks ...")
    try:
        try:
            raise shut
        except RuntimeError:
            raise ValueError("in a backward hook")  # what autograd may raise while handling it
    except ValueError as exc:
        assert peer_lost(exc)
    assert not peer_lost(RuntimeError("Mismatched allreduce tensor shapes")) and not peer_lost(None)
    # the collective in flight when a worker was killed, failing with Gloo's own error (CI, 2026-12-07: rank 0 called
    # it a bug in hvdfast), and a link that died under it
    from horovod.common.exceptions import HorovodInternalError
    for gloo in ("[/tmp/h/horovod-0.28.1/third_party/gloo/gloo/transport/tcp/pair.cc:589] Read error "
                 "[127.0.0.1]:55175: Connection reset by peer",
                 "[/tmp/h/horovod-0.28.1/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
                 "30000ms for recv operation to complete"):
        assert peer_lost(HorovodInternalError(gloo))


def test_adasum_with_a_loss_scaler_is_one_line(digits_dir, tmp_path):
    """fp16 trains with a loss scaler, which Adasum (it steps the optimizer inside backward) leaves no place to
    unscale: refused when the config is read, before anything starts (and at setup where precision=auto resolves to
    fp16 on a GPU)."""
    one_error(train(f"data.dir={digits_dir}", f"train.run_dir={tmp_path}", *SMALL, "train.precision=fp16",
                    "horovod.op=adasum", "horovod.bucket_mb=0"), "before a loss scaler could unscale the gradients")


def test_more_threads_than_owned_cores_is_said_at_start():
    from hvdfast.dist import threads_note
    assert threads_note(0, 2) is None and threads_note(2, 2) is None  # 0: one per owned core
    assert threads_note(4, 2).startswith("train.threads=4 on the 2 core(s) this worker owns: torch's threads then "
                                         "wait on each other")


def test_memory_that_runs_out_is_one_line_from_each_rank_it_ran_out_on(tmp_path):
    """A batch too large for the memory (here each worker's address space capped at 10 GiB by `prlimit --as`,
    under 1,024 ResNet-50 images of 224 px per worker; on a GPU, CUDA's allocator) ended the run in a 40-line
    traceback from every rank. Now each rank whose allocation failed says so in one line naming the knobs to
    lower (each: where a host's workers share its memory, rank 0 may not be one of them), and the job fails.
    Two ranks under the real horovodrun --gloo."""
    args = [*hvdfast_cmd("train", "--config", str(ROOT / "launch/configs/digits-cpu.yaml")), "data.backend=synthetic",
            "data.image_size=224", "data.batch_size=1024", "train.epochs=1", f"train.run_dir={tmp_path / 'run'}"]
    p = subprocess.run(["prlimit", f"--as={10 << 30}", *launch_cmd("gloo", 2, args)], env=launcher_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    out = p.stdout + p.stderr
    # (horovodrun --gloo's own traceback on a failed worker stays: `hvdfast launch` condenses it to a line)
    assert p.returncode != 0 and not [r for r in out.splitlines() if r.startswith("[") and "Traceback" in r], out
    errors = sorted(line.split(">:", 1)[-1] for line in out.splitlines() if "hvdfast: error" in line)
    line = ("out of CPU memory (asked for {} GiB) at data.batch_size=1024 per worker, data.image_size=224, "
            "model.name=resnet50, train.precision=auto: lower data.batch_size (divided by K, with "
            "horovod.backward_passes_per_step=K, the global batch stays) or data.image_size; this host's 2 workers "
            "share its memory.")
    assert len(errors) == 2, out[-3000:]
    asked = [e.split("asked for ")[1].split(" GiB")[0] for e in errors]
    assert errors == [f"hvdfast: error (rank 1): {line.format(asked[0])}", f"hvdfast: error: {line.format(asked[1])}"]


def test_a_gpu_allocation_that_failed_is_read_as_one():
    """CUDA's allocator raises torch.cuda.OutOfMemoryError with what it tried to allocate, DALI's its own words (no
    GPU here to make one fail; the texts are torch's and DALI's): read as GPU memory and the size asked for; other
    errors are left alone."""
    from hvdfast.run.fit import _failed_allocation
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity "
                                      "of 79.10 GiB of which 1.06 GiB is free.")
    assert _failed_allocation(oom) == ("GPU", "2.00 GiB")
    assert _failed_allocation(MemoryError()) == ("CPU", "")
    # DALI's (its CUDABadAlloc, through a pipeline's error or pybind11's MemoryError)
    assert _failed_allocation(RuntimeError("Critical error in pipeline:\nError in MIXED operator "
                                           "`nvidia.dali.fn.decoders.image`: CUDA allocation failed")) == ("GPU", "")
    assert _failed_allocation(MemoryError("Can't allocate 1073741824 bytes on device 0.")) == ("GPU", "1.00 GiB")
    assert _failed_allocation(MemoryError("Can't allocate 536870912 bytes on host.")) == ("CPU", "0.50 GiB")
    assert _failed_allocation(RuntimeError("Kernel size can't be greater than actual input size")) is None


def test_a_run_folder_in_use_by_another_run_is_refused_in_one_line(short_digits_dir, tmp_path):
    """Two runs in one train.run_dir (the same job submitted twice, a second terminal) both trained and overwrote
    each other's checkpoints and metrics.jsonl, each ending in its own SUMMARY. The run that writes there holds an
    flock on RUN_DIR/.lock (here this test holds it, as such a run's rank 0 would): the second is refused by rank 0
    in one line naming the holder, before it writes anything, and leaves the holder's lock as it was."""
    import fcntl
    import json
    run = tmp_path / "run"
    run.mkdir()
    holder = {"pid": 4242, "host": "nodea", "since": "2026-12-07 09:00:00"}
    with open(run / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(json.dumps(holder))
        lock.flush()
        p = run_launcher("gloo", 2, [*hvdfast_cmd("train", "--config", str(ROOT / "launch/configs/digits-cpu.yaml")),
                                     f"data.dir={short_digits_dir}", "data.backend=torchvision", "data.workers=0",
                                     "model.name=resnet18", "train.epochs=1", f"train.run_dir={run}"])
        errors = [line.split(">:", 1)[1] for line in p.stderr.splitlines() if "hvdfast: error" in line]
        assert errors == [f"hvdfast: error: train.run_dir '{run}' is in use by another run (pid 4242, host nodea, "
                          f"since 2026-12-07 09:00:00): two runs in one folder overwrite each other's checkpoints "
                          f"and records. Wait for it to end, or set another train.run_dir."], p.stdout + p.stderr
        assert not [r for r in (p.stdout + p.stderr).splitlines() if r.startswith("[") and "Traceback" in r]
        assert sorted(f.name for f in run.iterdir()) == [".lock"]
        assert json.loads((run / ".lock").read_text()) == holder


def plant_a_bug(tmp_path):
    """A folder for the workers' PYTHONPATH whose sitecustomize replaces run.fit.validate with a function that looks
    up a missing key (line 6): real code raising, on every rank, at the first validation."""
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import sys\nimport hvdfast.run.fit\n\n\ndef validate(*args, **kwargs):\n    return {}['top1']\n\n\n"
        "sys.modules['hvdfast.run.fit'].validate = validate\n")
    return inject

def test_a_bug_every_rank_meets_is_one_traceback_from_rank_0_and_one_line_from_each_other(digits_dir, tmp_path):
    """An unexpected exception (a bug, ours or a library's, not a user error) that every rank meets printed a
    traceback from every rank, interleaved line by line by the launcher. Now rank 0 prints its traceback and one line
    saying what it is; each other rank one line with its exception and where it was raised; each rank's whole
    traceback is in RUN_DIR/errors/rank<r>.txt; exit code 1. The bug is real code raising: a sitecustomize on the
    workers' PYTHONPATH replaces run.fit.validate with a function that looks up a missing key."""
    inject = plant_a_bug(tmp_path)
    run = tmp_path / "run"
    p = run_launcher("gloo", 2, [*hvdfast_cmd("train", "--config", "launch/configs/digits-cpu.yaml"), *SMALL,
                                 f"data.dir={digits_dir}", f"train.run_dir={run}", "train.epochs=0.1"],
                     env={"PYTHONPATH": f"{inject}:{ROOT}"})
    assert p.returncode != 0, p.stdout[-2000:]
    by_rank = {r: [line.split(">:", 1)[1] for line in p.stderr.splitlines() if line.startswith(f"[{r}]<stderr>:")]
               for r in (0, 1)}
    assert by_rank[1] == [f"hvdfast: internal error (rank 1): KeyError: 'top1' at {inject}/sitecustomize.py:6 in "
                          f"validate; traceback in {run}/errors/rank1.txt"], p.stderr
    assert by_rank[0].count("Traceback (most recent call last):") == 1, p.stderr
    assert by_rank[0][-2:] == [
        "KeyError: 'top1'",
        "hvdfast: internal error: KeyError: 'top1'. This is a bug in hvdfast or in a library under it, not a problem "
        f"with the config or the data. The traceback above is rank 0's; each rank's is in {run}/errors/rank<r>.txt. "
        "Please report it with the traceback and the run's config.yaml and versions.json."], p.stderr
    for r in (0, 1):
        saved = (run / "errors" / f"rank{r}.txt").read_text().splitlines()
        assert saved[0].startswith(f"rank {r}, pid ") and saved[1] == "Traceback (most recent call last):"
        assert saved[-1] == "KeyError: 'top1'" and f'  File "{inject}/sitecustomize.py", line 6, in validate' in saved



def test_hvdfast_launch_folds_the_line_each_other_rank_says_on_a_bug(digits_dir, tmp_path):
    """Through `hvdfast launch local` with 3 ranks: rank 0's traceback and line, the first other rank's line, and the
    rest folded into one line at the end (at 1,024 ranks one line instead of 1,022 more)."""
    inject = plant_a_bug(tmp_path)
    run = tmp_path / "run"
    p = subprocess.run(hvdfast_cmd("launch", "local", "--np", "3", "--controller", "gloo", "--config",
                                   "launch/configs/digits-cpu.yaml", *SMALL, f"data.dir={digits_dir}",
                                   f"train.run_dir={run}", "train.epochs=0.1"),
                       capture_output=True, text=True, timeout=300, cwd=ROOT,
                       env={**launcher_env(), "PYTHONPATH": f"{inject}:{ROOT}"})
    assert p.returncode != 0, p.stdout[-2000:]
    said = [line.split(">:", 1)[-1] for line in p.stderr.splitlines() if "internal error" in line]
    assert len(said) == 3 and said[-1].startswith("hvdfast launch:"), p.stderr  # the fold comes at the end
    rank_0 = [line for line in said if line.startswith("hvdfast: internal error: ")]
    assert len(rank_0) == 1 and rank_0[0].startswith("hvdfast: internal error: KeyError: 'top1'. This is a bug")
    other = next(line for line in said if line.startswith("hvdfast: internal error (rank "))
    first = int(other.split("(rank ")[1].split(")")[0])
    assert other == (f"hvdfast: internal error (rank {first}): KeyError: 'top1' at {inject}/sitecustomize.py:6 in "
                     f"validate; traceback in {run}/errors/rank{first}.txt"), p.stderr
    assert said[-1] == (f"hvdfast launch: 1 more rank(s) met the same internal error (ranks {3 - first}); each "
                        f"rank's traceback is in {run}/errors/rank<r>.txt"), p.stderr
    assert sorted(f.name for f in (run / "errors").iterdir()) == ["rank0.txt", "rank1.txt", "rank2.txt"]
