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


def test_missing_data_folder(tmp_path):
    p = run("train", "--config", "launch/configs/digits-cpu.yaml", f"data.dir={tmp_path / 'none'}",
            f"train.run_dir={tmp_path / 'run'}")
    assert p.returncode == 2
    assert "does not exist" in p.stderr and "hvdfast data digits" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_print_config_resolves_overrides():
    p = run("train", "--config", "launch/configs/digits-cpu.yaml", "optim.lr=0.7", "--print-config")
    assert p.returncode == 0 and "lr: 0.7" in p.stdout and "run_dir: runs/digits-cpu" in p.stdout


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
