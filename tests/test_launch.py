"""hvdfast launch: the exact commands for each target (dry run), and a real local launch."""
import subprocess

import pytest
import yaml

from conftest import ROOT, hvdfast_cmd, launcher_env

CFG = ["--config", "launch/configs/digits-cpu.yaml"]


def dry(*args, env=None):
    p = subprocess.run(hvdfast_cmd("launch", *args, "--dry-run"), capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=env or launcher_env())
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_local_and_hosts():
    out = dry("local", *CFG, "--np", "2", "--controller", "mpi")
    assert out.startswith("horovodrun -np 2 -H localhost:2 --mpi hvdfast train --config "
                          "launch/configs/digits-cpu.yaml")
    out = dry("hosts", *CFG, "--np", "8", "--hosts", "a:4,b:4", "--nic", "ib0", "--controller", "gloo",
              "optim.lr=0.2")
    assert "horovodrun -np 8 -H a:4,b:4 --network-interface ib0 --gloo hvdfast train" in out
    assert out.strip().endswith("optim.lr=0.2")
    p = subprocess.run(hvdfast_cmd("launch", "hosts", *CFG, "--dry-run"), capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=launcher_env())
    assert p.returncode == 2 and "needs --hosts" in p.stderr


def test_workers_default_to_the_hosts_slots_and_never_exceed_them(tmp_path):
    assert dry("hosts", *CFG, "--hosts", "a:4,b:4").startswith("horovodrun -np 8 -H a:4,b:4 ")
    assert dry("mpirun", *CFG, "--hosts", "a,b,c").startswith("mpirun -np 3 -H a,b,c ")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# two nodes\n\nn1 slots=3 max_slots=4  # the big one\nn2 slots=2\n")
    assert dry("mpirun", *CFG, "--hostfile", str(hostfile)).startswith("mpirun -np 5 -hostfile ")
    # horovodrun reads a hostfile only as bare 'host slots=N' lines (the comment, the blank line and max_slots
    # crashed it) and takes -H only as host:N: hvdfast gives it -H, one worker on a host that names no slots
    assert dry("hosts", *CFG, "--hostfile", str(hostfile)).startswith("horovodrun -np 5 -H n1:3,n2:2 --mpi ")
    assert dry("hosts", *CFG, "--hostfile", str(hostfile), "--hosts", "n3,n1:1").startswith(
        "horovodrun -np 7 -H n1:4,n2:2,n3:1 --mpi ")  # --hosts was dropped beside --hostfile
    colon = tmp_path / "colon"
    colon.write_text("n1 slots=3\nn2:2\n")
    assert dry("hosts", *CFG, "--hostfile", str(colon)).startswith("horovodrun -np 5 -H n1:3,n2:2 ")
    p = subprocess.run(hvdfast_cmd("launch", "mpirun", *CFG, "--hostfile", str(colon), "--dry-run"),
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=launcher_env())
    assert p.returncode == 2 and p.stderr.strip() == (
        f"hvdfast: error: hostfile {colon}: 'n2:2' is the form of --hosts; an Open MPI hostfile says 'n2 slots=2' "
        f"(mpirun would look for a host named 'n2:2')."), p.stderr
    assert dry("local", *CFG).startswith("horovodrun -np 2 -H localhost:2 ")
    assert dry("hosts", *CFG, "--hosts", "a:4,b:4", "--np", "6").startswith("horovodrun -np 6 ")
    for where in (["--hosts", "a:2"], ["--hostfile", str(hostfile)]):
        p = subprocess.run(hvdfast_cmd("launch", "mpirun", *CFG, *where, "--np", "9", "--dry-run"),
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=launcher_env())
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().startswith("hvdfast: error: --np 9 is more workers than ") and \
            "has slots" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_elastic_recipes_get_horovodruns_elastic_driver(tmp_path):
    """train.elastic=true: launch local|hosts write horovodrun's elastic options and a discovery script (listing
    the hosts, or this host's --np) in the run folder; the targets that start a fixed set of ranks are refused."""
    run = tmp_path / "run"
    hostfile = tmp_path / "hosts"
    hostfile.write_text("n1 slots=3\nn2\n")
    out = dry("hosts", *CFG, "--hostfile", str(hostfile), "--hosts", "n3:2", "--np", "4", "--max-np", "6",
              "train.elastic=true", f"train.run_dir={run}")
    script = run / "discover-hosts.sh"
    assert out.startswith(f"horovodrun -np 4 --min-np 1 --max-np 6 --host-discovery-script {script} --gloo "
                          f"hvdfast train --config launch/configs/digits-cpu.yaml train.elastic=true"), out
    assert out.splitlines()[1:] == [f"# {script} (written when launched):", "#!/bin/sh",
                                    "# written by hvdfast launch: the hosts an elastic job may use",
                                    "echo n1:3", "echo n2:1", "echo n3:2"]
    assert not script.exists()  # a dry run writes nothing
    out = dry("local", *CFG, "--np", "2", "--min-np", "2", "train.elastic=true", f"train.run_dir={run}")
    # one host: horovodrun would wait for a second one to find the interface they share
    assert out.startswith(f"horovodrun -np 2 --min-np 2 --max-np 2 --host-discovery-script {script} "
                          f"--network-interface lo --gloo hvdfast train ")
    assert out.splitlines()[-1] == "echo localhost:2"
    for args, says in [(["mpirun"], "launch mpirun starts a fixed set of workers"),
                       (["slurm"], "launch slurm starts a fixed set of workers"),
                       (["local", "--controller", "mpi"], "runs on Horovod's Gloo controller"),
                       (["ray", "--controller", "mpi"],
                        "launch ray runs Horovod's Gloo controller, not --controller mpi"),
                       (["hosts", "--hosts", "a:4"], "an elastic job on one host needs --nic"),
                       (["local", "--min-np", "3"], "needs --min-np <= --np <= --max-np; got 3, 2, 2")]:
        p = subprocess.run(hvdfast_cmd("launch", *args, *CFG, "train.elastic=true", "--dry-run"),
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=launcher_env())
        assert p.returncode == 2 and says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_a_users_host_discovery_script_is_checked_before_horovodrun_runs_it(tmp_path):
    """horovodrun's elastic driver reads one 'host:slots' line per host; a hostfile's 'host slots=2' line (or a
    script that fails) crashed it with a traceback in its discovery thread. A missing or non-executable script is
    refused by a dry run too; its output is checked when the job is launched."""
    scripts = {"missing": None, "plain": "localhost:2", "hostfile": "echo 'localhost slots=2'",
               "fails": "echo 'no inventory service' >&2; exit 3", "empty": "true", "good": "echo localhost:2"}
    for name, body in scripts.items():
        if body is not None:
            (tmp_path / name).write_text(f"#!/bin/sh\n{body}\n")
            (tmp_path / name).chmod(0o644 if name == "plain" else 0o755)
    for name, says in (("missing", "does not exist"), ("plain", "is not executable (chmod +x it)")):
        p = subprocess.run(hvdfast_cmd("launch", "local", *CFG, "train.elastic=true", "--host-discovery-script",
                                       str(tmp_path / name), "--dry-run"),
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=launcher_env())
        assert p.returncode == 2 and p.stderr.strip() == f"hvdfast: error: --host-discovery-script " \
            f"{tmp_path / name} {says}; horovodrun runs it to learn the hosts.", p.stderr
    for name, says in (("hostfile", "printed 'localhost slots=2'; horovodrun's elastic driver reads one "
                                     "'host:slots' line per available host (e.g. node1:4)."),
                       ("fails", "exited with code 3 (no inventory service); horovodrun runs it to learn the hosts."),
                       ("empty", "printed no hosts;")):
        p = subprocess.run(hvdfast_cmd("launch", "local", *CFG, "train.elastic=true", "--host-discovery-script",
                                       str(tmp_path / name), f"train.run_dir={tmp_path / 'run'}"),
                           capture_output=True, text=True, timeout=120, cwd=ROOT, env=launcher_env())
        assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.strip().startswith(
            f"hvdfast: error: --host-discovery-script {tmp_path / name} {says}"), p.stderr
        assert not (tmp_path / "run").exists()  # nothing started
    from hvdfast.launch import job
    job.check_discovery_output(str(tmp_path / "good"))


@pytest.mark.parametrize("args,says", [
    (["local", "--hosts", "a:2,b:2"], "--hosts does not apply to launch local (launch hosts runs on them); it is an "
                                      "option of launch hosts / mpirun."),
    (["slurm", "--np", "16"], "--np does not apply to launch slurm (a batch job has --nodes x --tasks-per-node "
                              "workers); it is an option of launch local / hosts / mpirun / ray."),
    (["pbs", "--hostfile", "h"], "--hostfile does not apply to launch pbs (the scheduler picks the hosts); it is an "
                                 "option of launch hosts / mpirun."),
    (["mpirun", "--nodes", "4"], "--nodes does not apply to launch mpirun; it is an option of launch slurm / pbs."),
    (["pbs", "--wait"], "--wait does not apply to launch pbs; it is an option of launch slurm."),
    (["slurm", "--nic", "ib0"], "--nic does not apply to launch slurm; it is an option of launch local / hosts / "
                                "mpirun / pbs."),
    (["local", "--max-np", "4"], "--max-np is for elastic training: add train.elastic=true, or leave it out."),
])
def test_an_option_the_target_does_not_act_on_is_refused(args, says):
    """Not ignored: `launch local --hosts a:2,b:2` started 4 workers on this host, `launch slurm --np 16` a job
    of --nodes x --tasks-per-node."""
    p = subprocess.run(hvdfast_cmd("launch", *args, *CFG, "--dry-run"), capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=launcher_env())
    assert p.returncode == 2 and p.stderr.strip() == f"hvdfast: error: {says}", p.stderr


@pytest.mark.parametrize("target", ["mpirun", "slurm", "pbs"])
def test_a_controller_the_target_cannot_run_is_refused(target):
    p = subprocess.run(hvdfast_cmd("launch", target, *CFG, "--controller", "gloo", "--dry-run"), capture_output=True,
                       text=True, timeout=120, cwd=ROOT, env=launcher_env())
    assert p.returncode == 2 and p.stderr.strip() == f"hvdfast: error: launch {target} runs Horovod's MPI " \
        f"controller, not --controller gloo; launch local and launch hosts start horovodrun --gloo.", p.stderr


@pytest.mark.parametrize("target,resume", [("slurm", "never"), ("pbs", "runs/x/checkpoints/ckpt-e0001-s00000020.pt")])
def test_a_batch_job_that_would_not_resume_after_a_requeue_is_refused(target, resume):
    """A requeued job runs its command again: with train.resume=never it started over at every requeue, with a
    fixed path it went back to that checkpoint (a preempted job that never finished)."""
    p = subprocess.run(hvdfast_cmd("launch", target, *CFG, "--cpu", "--dry-run", f"train.resume={resume}"),
                       capture_output=True, text=True, timeout=120, cwd=ROOT, env=launcher_env())
    assert p.returncode == 2 and p.stderr.strip() == (
        f"hvdfast: error: train.resume={resume} in a {target} job: after a stop the job runs its command again, "
        f"which must continue from the checkpoint it wrote (train.resume=auto). To start over, use a new "
        f"train.run_dir; to start from a checkpoint, copy it into that run_dir's checkpoints/ folder."), p.stderr


def test_mpirun_forwards_environment_and_horovod_knobs():
    out = dry("mpirun", *CFG, "--np", "16", "--hosts", "n1:8,n2:8", "--nic", "eth0")
    for piece in ("mpirun -np 16 -H n1:8,n2:8 -bind-to none -map-by slot", "-x PATH",
                  "-mca btl_tcp_if_include eth0", "-x HOROVOD_CYCLE_TIME=20.0",
                  # the recipe's 64 MiB, capped at half its 25 MiB gradient buckets
                  "-x HOROVOD_FUSION_THRESHOLD=13107200", "-x OMPI_MCA_mpi_yield_when_idle=1"):
        assert piece in out, piece
    assert "hvdfast train --config launch/configs/digits-cpu.yaml" in out


def test_tuned_settings_become_flags(tmp_path):
    f = tmp_path / "tuned.yaml"
    f.write_text(yaml.safe_dump({"horovod": {"fusion_threshold_mb": 8.0, "cycle_time_ms": 1.0,
                                             "compression": "none", "mpi_allreduce": "recursive_doubling"},
                                 "launcher": {"controller": "gloo",
                                              "env": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}}}))
    env = launcher_env()
    env["HVDFAST_TUNED"] = str(f)
    local = dry("local", *CFG, env=env)
    assert local.startswith("env GLIBC_TUNABLES=glibc.malloc.hugetlb=1 horovodrun -np 2") and "--gloo" in local
    out = dry("mpirun", *CFG, env=env)
    assert "-x HOROVOD_FUSION_THRESHOLD=8388608" in out and "-x HOROVOD_CYCLE_TIME=1.0" in out
    assert "-x GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in out
    # Open MPI's algorithm the tuner chose reaches every rank mpirun starts (ranks started by horovodrun set it
    # from the same config before hvd.init)
    assert "-x OMPI_MCA_coll_tuned_allreduce_algorithm=recursive_doubling" in out
    assert "-x OMPI_MCA_coll_tuned_use_dynamic_rules=1" in out
    batch = dry("slurm", *CFG, env=env).split("export ")[1]
    assert "GLIBC_TUNABLES=glibc.malloc.hugetlb=1" in batch
    assert "OMPI_MCA_coll_tuned_allreduce_algorithm=recursive_doubling" in batch
    assert "GLIBC_TUNABLES" not in dry("local", *CFG, "horovod.tuned=never", env=env)


@pytest.mark.parametrize("target", ["slurm", "pbs"])
def test_batch_scripts(target):
    out = dry(target, *CFG, "--nodes", "4", "--gpus-per-node", "8", "--time", "02:00:00", "--partition", "gpu")
    assert out.startswith("#!/bin/bash\n")
    lines = out.splitlines()
    if target == "slurm":
        for piece in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-node=8",
                      "#SBATCH --partition=gpu", "srun --mpi=pmix --cpu-bind=none hvdfast train",
                      "export HOROVOD_CYCLE_TIME=20.0"):
            assert piece in out, piece
        # preemption: warned 120 s before the limit, requeue allowed, the step in the background with the trap
        # forwarding the warning to it, and a requeue on the stop's exit code
        assert "#SBATCH --signal=B:USR1@120" in [x.split("  #")[0] for x in lines] and "#SBATCH --requeue" in lines
        assert 'scontrol requeue "$SLURM_JOB_ID"' in out
    else:
        for piece in ("#PBS -l select=4:mpiprocs=8:ngpus=8", "#PBS -l walltime=02:00:00",
                      'mpirun -np 32 -hostfile "$PBS_NODEFILE" -bind-to none', "-x HOROVOD_FUSION_THRESHOLD"):
            assert piece in out, piece
        assert "#PBS -r y" in [x.split("  #")[0] for x in lines] and "  qsub /" in out
    assert "trap 'forward SIGUSR1' USR1" in lines and "trap 'forward SIGTERM' TERM" in lines
    assert '  [ -n "$step_pid" ] && kill -USR1 "$step_pid" 2>/dev/null' in lines
    assert any(x.endswith(" &") and "hvdfast train" in x for x in lines) and 'if [ "$rc" -eq 75 ]; then' in lines
    assert "bin/activate" in out
    syntax = subprocess.run(["bash", "-n"], input=out, capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr


def test_cpu_batch_jobs_ask_for_what_a_cpu_node_has():
    out = dry("slurm", *CFG, "--cpu", "--nodes", "1")
    assert "#SBATCH --ntasks-per-node=2" in out and "--gpus-per-node" not in out
    assert "#SBATCH --ntasks-per-node=16" in dry("slurm", *CFG, "--cpu", "--tasks-per-node", "16")
    assert "#PBS -l select=2:mpiprocs=2\n" in dry("pbs", *CFG, "--cpu", "--nodes", "2")


def test_launch_local_trains_the_digits_recipe(digits_dir, tmp_path):
    p = subprocess.run(hvdfast_cmd("launch", "local", *CFG, "--np", "2", "--controller", "gloo",
                                   f"data.dir={digits_dir}", "model.name=resnet18", "data.image_size=32",
                                   "data.val_resize=32", "train.epochs=0.3", f"train.run_dir={tmp_path}",
                                   "train.progress=lines"),
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=launcher_env())
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "SUMMARY best top-1" in p.stdout and "over 2 worker(s)" in p.stdout


def test_preflight_reads_hosts_and_hostfiles(tmp_path):
    from hvdfast import preflight
    from hvdfast.config import ConfigError
    f = tmp_path / "hostfile"
    f.write_text("# nodes\nn1 slots=8\nn2:8\n\nn1 slots=8\n")
    assert preflight.parse_hosts("a:4,b:4,a", None) == ["a", "b"]
    assert preflight.parse_hosts(None, str(f)) == ["n1", "n2"]
    with pytest.raises(ConfigError, match="does not exist"):
        preflight.parse_hosts(None, str(tmp_path / "missing"))
    p = subprocess.run(hvdfast_cmd("doctor", "--hostfile", str(tmp_path / "missing")), capture_output=True,
                       text=True, timeout=120, cwd=ROOT, env=launcher_env())
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "hostfile" in p.stderr


def test_relay_condenses_horovodruns_report_of_a_worker_exit_and_keeps_other_tracebacks():
    import io
    from hvdfast.launch.supervisor import StderrRelay
    report = ["[0]<stderr>:hvdfast: error: data.dir 'x' does not exist\n", "Process 0 exit with status code 2.\n",
              "Traceback (most recent call last):\n", '  File "/venv/bin/horovodrun", line 8, in <module>\n',
              "[1]<stderr>:a worker's line still passes\n",
              "RuntimeError: Horovod detected that one or more processes exited with non-zero status, thus causing "
              "the job to be terminated. The first process to do so was:\n", "Process name: 0\n", "Exit code: 2\n",
              "\n"]
    out = io.StringIO()
    StderrRelay(iter(report), out).run()
    assert out.getvalue().splitlines() == [
        "[0]<stderr>:hvdfast: error: data.dir 'x' does not exist", "Process 0 exit with status code 2.",
        "[1]<stderr>:a worker's line still passes",
        "hvdfast launch: worker 0 exited with code 2; horovodrun ended the job (the workers' own messages are above)"]
    crash = ["Traceback (most recent call last):\n", '  File "x.py", line 1, in <module>\n', "ValueError: boom\n"]
    out = io.StringIO()
    StderrRelay(iter(crash), out).run()
    assert out.getvalue() == "".join(crash)


def test_relay_folds_the_line_every_rank_but_0_says_on_a_bug():
    """process.internal_error: rank 0 prints its traceback and a line, every other rank one line. The first of
    those passes; the rest of a bug's lines (the same text but the rank) are one line at the end, naming the ranks.
    Another bug's line passes as its own; tagged by horovodrun or not (mpirun)."""
    import io
    from hvdfast.launch.supervisor import StderrRelay
    from hvdfast.process import ranges
    assert ranges([7, 2, 3, 4, 9, 10]) == "2-4, 7, 9-10" and ranges([5]) == "5"

    def bug(rank: int, what: str = "KeyError: 'top1' at hvdfast/run/fit.py:324 in fit", tag: bool = True) -> str:
        return ((f"[{rank}]<stderr>:" if tag else "") + f"hvdfast: internal error (rank {rank}): {what}; traceback "
                f"in /r/errors/rank{rank}.txt\n")
    lines = ["[0]<stderr>:Traceback (most recent call last):\n", "[0]<stderr>:KeyError: 'top1'\n",
             bug(2), bug(1), bug(5, "ValueError: x at a.py:1 in f"), bug(3), bug(4, tag=False),
             "[0]<stderr>:hvdfast: internal error: KeyError: 'top1'. This is a bug …\n",
             "Process 0 exit with status code 1.\n"]
    out = io.StringIO()
    StderrRelay(iter(lines), out).run()
    assert out.getvalue().splitlines() == [
        "[0]<stderr>:Traceback (most recent call last):", "[0]<stderr>:KeyError: 'top1'", bug(2).rstrip(),
        bug(5, "ValueError: x at a.py:1 in f").rstrip(),
        "[0]<stderr>:hvdfast: internal error: KeyError: 'top1'. This is a bug …",
        "Process 0 exit with status code 1.",
        "hvdfast launch: 3 more rank(s) met the same internal error (ranks 1, 3-4); each rank's traceback is in "
        "/r/errors/rank<r>.txt"]

def test_relay_shows_what_it_holds_when_the_supervisor_stops_waiting_for_eof():
    """horovodrun's middlemen and resource tracker inherit its stderr and may keep it open after horovodrun exited:
    the supervisor's finish() ends the relay then, and the held report is shown once, not lost."""
    import io
    import os
    from hvdfast.launch.supervisor import StderrRelay
    r, w = os.pipe()
    with os.fdopen(r, errors="replace") as src, os.fdopen(w, "w") as sink:
        out = io.StringIO()
        relay = StderrRelay(src, out)
        relay.thread.start()
        sink.write("[0]<stdout>:stopped on SIGTERM\nTraceback (most recent call last):\n  File \"horovodrun\"\n"
                   "RuntimeError: Horovod detected that one or more processes exited with non-zero status, thus "
                   "causing the job to be terminated. The first process to do so was:\nProcess name: 1\n"
                   "Exit code: 75\n")
        sink.flush()  # and the write end stays open, as a lingering helper process would keep it
        relay.finish(wait_s=1.0)
        assert relay.thread.is_alive()  # still blocked reading: EOF never came
        relay.finish(wait_s=1.0)        # a second call adds nothing
        sink.close()                    # the helper exits: EOF, which adds nothing either
        relay.thread.join(timeout=10)
        assert not relay.thread.is_alive()
        assert out.getvalue().splitlines() == [
            "[0]<stdout>:stopped on SIGTERM",
            "hvdfast launch: worker 1 exited with code 75; horovodrun ended the job (the workers' own messages are "
            "above)"]


@pytest.mark.parametrize("launcher_rc", [0, 1])
def test_a_stopped_run_exits_75_whatever_the_launcher_reports(tmp_path, capsys, launcher_rc):
    """supervise's exit code comes from the run's stop record when there is one: horovodrun reports a stop's exit 75
    as 1, and as 0 when it loses the workers' exit status (Horovod 0.28.1 reaps their shells from two threads). The
    launcher here is a stand-in (a Python one-liner) that writes the record as rank 0 does and exits with what
    horovodrun would."""
    import sys
    from hvdfast.launch.supervisor import supervise
    from hvdfast.run import stop
    write = (f"import json, time; open({str(tmp_path / stop.RECORD)!r}, 'w').write(json.dumps("
             f"{{'time': time.time(), 'step': 3, 'exit_code': 75}}))")
    launcher = [sys.executable, "-c", f"{write}; raise SystemExit({launcher_rc})"]
    assert supervise(launcher, "local", tmp_path) == stop.EXIT_STOPPED
    said = "hvdfast launch: the workers stopped with exit code 75; horovodrun lost their exit status and reported 0"
    assert (said in capsys.readouterr().err) == (launcher_rc == 0)  # 1: horovodrun's own report says it
    assert supervise([sys.executable, "-c", f"raise SystemExit({launcher_rc})"], "local", tmp_path / "x") == launcher_rc


def test_a_batch_script_without_its_scheduler_here_is_written_and_not_submitted(tmp_path):
    import shutil
    if shutil.which("qsub"):
        pytest.skip("qsub is installed here: this checks a machine without PBS")
    script = tmp_path / "job.sh"
    p = subprocess.run(hvdfast_cmd("launch", "pbs", *CFG, "--script", str(script)), capture_output=True, text=True,
                       timeout=120, cwd=ROOT, env=launcher_env())
    assert p.returncode == 127 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == (f"hvdfast launch: qsub is not on PATH here, so {script} was written but not "
                                f"submitted; submit it where PBS runs: qsub {script}")
    assert script.read_text().startswith("#!/bin/bash")
