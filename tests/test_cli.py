"""The command line as a user meets it: help text, and one clear line for bad input."""
import subprocess

import pytest

from conftest import ROOT, hvdfast_cmd, launcher_env, make_jpeg_tree


def run(*args, timeout=120):
    return subprocess.run(hvdfast_cmd(*args), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=launcher_env())


def test_help_lists_the_verbs():
    p = run("--help")
    assert p.returncode == 0
    for verb in ("train", "data", "doctor", "plot"):
        assert verb in p.stdout
    t = run("train", "--help")
    assert t.returncode == 0 and "horovodrun -np 2" in t.stdout and "section.key=value" in t.stdout


@pytest.mark.parametrize("args,message", [
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr' in launch/configs/digits-cpu.yaml + overrides. "
                        "Did you mean 'optim.lr'?"),
    (["data.batch_size=lots"], "config key 'data.batch_size' must be int, got 'lots' (str)."),
])
def test_config_mistakes_give_one_line_and_exit_2(args, message):
    p = run("train", "--config", "launch/configs/digits-cpu.yaml", *args)
    assert p.returncode == 2
    assert p.stderr.strip() == f"hvdfast: error: {message}"
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("args,says", [
    (["bench", "train", "--np", "2,0"], "argument --np: item '0' of '2,0': must be a whole number >= 1, got '0'"),
    (["bench", "train", "--steps", "0"], "argument --steps: must be a whole number >= 1, got '0'"),
    (["bench", "allreduce", "--buckets-mb", "25,x"], "argument --buckets-mb: item 'x' of '25,x': must be a number"),
    (["bench", "allreduce", "--compressions", "none,fp8"], "'fp8' is not one of none, fp16, bf16"),
    (["tune", "--repeat", "0"], "argument --repeat: must be a whole number >= 1, got '0'"),
    (["tune", "--hosts", "a:0,b:1"], "argument --hosts: item 'a:0' of 'a:0,b:1': expected host or host:slots"),
    (["bench", "cluster", "--hosts", "1"], "argument --hosts: must be a whole number >= 2, got '1'"),
    (["bench", "data", "--dir", "x", "--batch", "0"], "argument --batch: must be a whole number >= 1, got '0'"),
    (["bench", "model", "--workers", "8,0"], "argument --workers: item '0' of '8,0'"),
    (["launch", "slurm", "--nodes", "0"], "argument --nodes: must be a whole number >= 1, got '0'"),
    (["doctor", "--hosts", ":1"], "argument --hosts: item ':1' of ':1'"),
    (["data", "photos", "x", "--images", "0"], "argument --images: must be a whole number >= 1, got '0'"),
])
def test_bad_numbers_and_lists_stop_at_the_command_line(args, says):
    """Before anything is launched: argparse's usage and one error line (the option, the item, what it takes)."""
    p = run(*args)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and says in errors[0], p.stderr


def test_a_bad_override_stops_a_benchmark_before_its_workers_start():
    p = run("bench", "train", "--steps", "1", "optim.lrr=0.1")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "running" not in p.stderr, p.stderr
    assert p.stderr.strip() == ("hvdfast: error: unknown config key 'optim.lrr' in launch/configs/digits-cpu.yaml "
                                "+ overrides. Did you mean 'optim.lr'?")


@pytest.mark.parametrize("verb,override,says", [
    ("train", "model.name=resnet18", "; use --model;"), ("scaling", "data.batch_size=4", "; use --batch;"),
    ("train", "optim.name=lars", " (synthetic images, plain SGD); it reads")])
def test_an_override_a_benchmark_would_ignore_is_refused(verb, override, says):
    """`bench train model.name=resnet18` timed ResNet-50 (the --model default) and said nothing."""
    p = run("bench", verb, "--steps", "1", override)
    assert p.returncode == 2 and "running" not in p.stderr, p.stderr
    assert p.stderr.startswith(f"hvdfast: error: override '{override}' does not apply to a benchmark's step") and \
        says in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("args", [["bench", "train"], ["bench", "allreduce"], ["tune"], ["bench", "cluster"]])
def test_a_benchmarks_model_is_checked_before_anything_starts(args):
    p = run(*args, "--model", "resnt18")
    assert p.returncode in (1, 2) and "Traceback" not in p.stderr and "running" not in p.stderr, p.stderr
    assert p.stderr.strip().endswith("unknown model.name 'resnt18'; did you mean resnet18, resnet152, resnet101?")
    assert len(p.stderr.strip().splitlines()) == 1


def test_recipes_are_found_from_any_folder(tmp_path):
    """launch/configs/... names the checkout's recipe from any folder (and workers started elsewhere read the
    same file); a recipe in this folder wins; a missing one is named as written."""
    from hvdfast import config
    p = subprocess.run(hvdfast_cmd("train", "--config", "launch/configs/digits-cpu.yaml", "--print-config"),
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=launcher_env())
    assert p.returncode == 0 and "run_dir: runs/digits-cpu" in p.stdout, p.stderr
    assert config.locate("launch/configs/digits-cpu.yaml") == ROOT / "launch/configs/digits-cpu.yaml"
    (tmp_path / "launch/configs").mkdir(parents=True)
    (tmp_path / "launch/configs/digits-cpu.yaml").write_text("optim: {lr: 0.123}\n")
    p = subprocess.run(hvdfast_cmd("train", "--config", "launch/configs/digits-cpu.yaml", "--print-config"),
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=launcher_env())
    assert p.returncode == 0 and "lr: 0.123" in p.stdout, p.stderr
    p = subprocess.run(hvdfast_cmd("train", "--config", "launch/configs/nope.yaml"), capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=launcher_env())
    assert p.returncode == 2 and p.stderr.startswith("hvdfast: error: config file 'launch/configs/nope.yaml' not "
                                                     "found"), p.stderr


def test_a_data_folder_that_cannot_be_written(tmp_path):
    (tmp_path / "afile").write_text("")
    p = run("data", "digits", str(tmp_path / "afile" / "digits"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("hvdfast: error: data digits: Not a directory: "), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_an_embedded_set_is_not_written_into_another_data_set(tmp_path):
    """`hvdfast data digits DIR` over a folder holding other images mixed its 10 classes into that data set (and
    `data mnist` over the digits gave one set of both); now it refuses, and rewriting its own output is fine."""
    mine = tmp_path / "mine"
    (mine / "train/cat").mkdir(parents=True)
    (mine / "train/cat/whiskers.jpg").write_bytes(b"a photo")
    p = run("data", "digits", str(mine))
    assert p.returncode == 2 and p.stderr.strip() == (
        f"hvdfast: error: '{mine}' already holds files that are not this data set's (e.g. train/cat/whiskers.jpg); "
        f"hvdfast data digits writes into a new or empty folder, or over its own earlier output, so that two data "
        f"sets never mix into one."), p.stderr
    assert sorted(q.name for q in mine.rglob("*")) == ["cat", "train", "whiskers.jpg"]  # nothing written
    digits = tmp_path / "digits"
    assert run("data", "digits", str(digits)).returncode == 0
    (digits / "train/3/.DS_Store").write_bytes(b"")  # hidden files are not images of any set
    again = run("data", "digits", str(digits))
    assert again.returncode == 0 and again.stdout.startswith("wrote 1437 training and 360 validation images")
    other = run("data", "mnist", str(digits))
    assert other.returncode == 2 and "hvdfast data mnist writes into a new or empty folder" in other.stderr


def test_bench_model_names_a_file_that_is_not_a_cluster_report(tmp_path):
    (tmp_path / "notes.json").write_text('{"rows": []}')
    for path, says in [(tmp_path / "none.json", "cannot read"), (tmp_path / "notes.json", "is not an `hvdfast "
                                                                                        "bench cluster` JSON report")]:
        p = run("bench", "model", "--cluster", str(path))
        assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
        assert p.stderr.strip().startswith(f"hvdfast bench model: {path}" if "not an" in says else
                                           "hvdfast bench model: cannot read") and says in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1


def test_missing_data_folder(tmp_path):
    p = run("train", "--config", "launch/configs/digits-cpu.yaml", f"data.dir={tmp_path / 'none'}",
            f"train.run_dir={tmp_path / 'run'}")
    assert p.returncode == 2
    assert "does not exist" in p.stderr and "hvdfast data digits" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_print_config_resolves_overrides():
    p = run("train", "--config", "launch/configs/digits-cpu.yaml", "optim.lr=0.7", "--print-config")
    assert p.returncode == 0 and "lr: 0.7" in p.stdout and "run_dir: runs/digits-cpu" in p.stdout


def test_keys_lists_values_sources_and_meanings():
    p = run("train", "--config", "launch/configs/digits-cpu.yaml", "optim.lr=0.7", "--keys", "optim.lr")
    assert p.returncode == 0, p.stderr
    assert [line for line in p.stdout.splitlines() if not line.startswith(" ")] == \
        ["optim.lr=0.7  (override)", "optim.lr_batch=3200  (recipe)", "optim.lr_scaling=sqrt  (recipe)"]
    p = run("train", "--keys", "optim.lr=0.7")
    assert p.returncode == 2 and p.stderr.strip() == "hvdfast: error: no config key or description mentions " \
        "'optim.lr=0.7' (overrides go before --keys: hvdfast train KEY=VALUE --keys TEXT); `hvdfast train " \
        "--keys` lists them all."


def test_data_check_names_a_corrupt_file(tmp_path):
    root = make_jpeg_tree(tmp_path / "d", classes=2, per_class={"train": 3, "val": 2})
    ok = run("data", "check", str(root))
    assert ok.returncode == 0 and "train: 6 images" in ok.stdout
    bad = root / "train/c1/broken.jpg"
    bad.write_bytes((root / "train/c1/img_1_000.jpg").read_bytes()[:200])
    p = run("data", "check", str(root))
    assert p.returncode == 1 and "broken.jpg" in p.stdout and "img_1_000.jpg" not in p.stdout


def test_a_cli_process_ends_with_its_heap_out_of_the_exit_collection(tmp_path):
    """`hvdfast ...` as a process (console script, python -m hvdfast.cli) freezes the heap as it ends, so the
    interpreter's exit skips a cyclic collection over torch's objects (process.lighten_exit); called in-process
    with arguments, main leaves the collector alone (the caller lives on)."""
    import gc
    import sys
    from hvdfast import cli
    probe = ("import atexit, gc, sys\n"
             "atexit.register(lambda: print('at exit', gc.get_freeze_count() > 0, gc.isenabled()))\n"
             "from hvdfast import cli\n"
             "sys.argv = ['hvdfast', 'data', 'check', sys.argv[1]]\n"
             "sys.exit(cli.main())\n")
    tree = make_jpeg_tree(tmp_path / "tree", classes=2, per_class={"train": 1, "val": 1})
    p = subprocess.run([sys.executable, "-c", probe, str(tree)], capture_output=True, text=True, timeout=120,
                       cwd=ROOT, env=launcher_env())
    assert p.returncode == 0 and p.stdout.strip().endswith("at exit True False"), p.stdout + p.stderr
    frozen, enabled = gc.get_freeze_count(), gc.isenabled()
    assert cli.main(["data", "check", str(tree)]) == 0
    assert (gc.get_freeze_count(), gc.isenabled()) == (frozen, enabled)


def test_plot_skips_a_line_cut_short(tmp_path):
    """A run killed mid-write can leave half a line at the end of metrics.jsonl: the curves are drawn from the
    rest, and the command says how many lines it skipped."""
    import json
    rows = [{"kind": "train", "step": s, "loss": 2.0 / s, "top1": 10.0 * s, "img_s": 100.0} for s in (1, 2, 3)]
    rows.append({"kind": "val", "step": 3, "loss": 0.9, "top1": 55.0})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "metrics.jsonl").write_text(text + text.splitlines()[0][:17])
    p = run("plot", str(tmp_path))
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == f"hvdfast plot: skipped 1 unreadable line(s) of {tmp_path / 'metrics.jsonl'} " \
                               f"(a run stopped mid-write?)"
    assert (tmp_path / "curves.png").stat().st_size > 0
    # a run that has not logged a step yet: said, instead of an empty figure
    (tmp_path / "curves.png").unlink()
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"kind": "summary", "step": 0}) + "\n")
    p = run("plot", str(tmp_path))
    assert p.returncode == 2 and p.stderr.strip() == (
        f"hvdfast: error: {tmp_path / 'metrics.jsonl'} holds no training or validation records yet (the run has "
        f"not logged its first step, train.log_every); plot it once it has.") and not (tmp_path / "curves.png").exists()


def test_an_output_folder_that_cannot_be_written_stops_before_measuring(tmp_path):
    """Checked first, not when the report is written after minutes (an hour, for bench cluster) of measuring."""
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "bench"
    for args, what in [(["tune", "--out", str(out / "tuned.yaml")], "the settings file's folder"),
                       (["bench", "train", "--out-dir", str(out)], "--out-dir"),
                       (["bench", "allreduce", "--out-dir", str(out)], "--out-dir"),
                       (["bench", "cluster", "--out-dir", str(out)], "--out-dir")]:
        p = run(*args)
        assert p.returncode == 1 and "Traceback" not in p.stderr and "running" not in p.stderr, p.stderr
        assert p.stderr.strip() == f"hvdfast: cannot write {what} '{out}': Not a directory", p.stderr


def test_a_reader_that_leaves_ends_the_command_quietly():
    """`hvdfast ... | head`: the reader closes the pipe; the command stops as a shell tool does (exit 141, nothing
    on stderr), not with a BrokenPipeError traceback."""
    p = subprocess.Popen(hvdfast_cmd("study", "launch/studies/mnist.yaml", "--dry-run"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=ROOT, env=launcher_env())
    p.stdout.close()  # before the command (seconds to start) writes anything
    _, err = p.communicate(timeout=120)
    assert p.returncode == 141 and err == "", err


def test_a_study_filter_that_matches_no_cell_says_so():
    p = run("study", "launch/studies/mnist.yaml", "--only", "zzz", "--dry-run")
    assert p.returncode == 2 and p.stdout == "", p.stdout
    assert p.stderr.strip().startswith("hvdfast: error: --only 'zzz' matches none of the study's 20 cells "
                                       "(sgd-b64-bf16-w2, "), p.stderr
