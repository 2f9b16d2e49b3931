"""hvdfast/argtypes.py: the argparse types every command's numbers, lists and host lists go through."""
import argparse

import pytest

from hvdfast.argtypes import amount, count, count_or, csv, host_slots, hosts, one_of, total_slots


def test_count_and_amount():
    assert count(1)("3") == 3 and count(0)("0") == 0
    for bad in ("0", "-1", "x", "1.5", ""):
        with pytest.raises(argparse.ArgumentTypeError, match=r"whole number >= 1"):
            count(1)(bad)
    assert count_or("default")("default") == "default" and count_or("default")("2") == "2"
    with pytest.raises(argparse.ArgumentTypeError, match=r"whole number >= 1 or 'default', got 'x'"):
        count_or("default")("x")
    assert amount(0)("0") == 0.0 and amount(0)("2.5") == 2.5
    with pytest.raises(argparse.ArgumentTypeError, match=r"number > 0, got '0'"):
        amount(0, above=True)("0")
    for bad in ("-0.1", "nan", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"number >= 0"):
            amount(0)(bad)


def test_csv_checks_every_item_and_returns_the_text():
    assert csv(count(1))("1, 2,4") == "1,2,4"
    assert csv(one_of(("none", "fp16")))("fp16") == "fp16"
    with pytest.raises(argparse.ArgumentTypeError, match=r"item 'x' of '2,x': must be a whole number"):
        csv(count(1))("2,x")
    with pytest.raises(argparse.ArgumentTypeError, match=r"'fp8' is not one of none, fp16"):
        csv(one_of(("none", "fp16")))("none,fp8")
    for bad in ("", "1,,2", ","):
        with pytest.raises(argparse.ArgumentTypeError, match="comma-separated list"):
            csv(count(1))(bad)


def test_hosts_and_their_slots():
    assert hosts("a:4, b:4") == "a:4,b:4" and total_slots("a:4,b:4") == 8
    assert total_slots(hosts("a,b:2")) == 3  # a host without :N has one slot
    assert host_slots(hosts("a, b:2,c:1")) == [("a", 1), ("b", 2), ("c", 1)]
    for bad in ("a:0", "a:x", ":1", "a,,b", "a:"):
        with pytest.raises(argparse.ArgumentTypeError, match="host:slots"):
            hosts(bad)


def test_argparse_reports_the_type_error_in_one_line(capsys):
    p = argparse.ArgumentParser(prog="hvdfast bench train")
    p.add_argument("--np", type=csv(count(1)))
    with pytest.raises(SystemExit) as exc:
        p.parse_args(["--np", "2,0"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "hvdfast bench train: error: argument --np: item '0' of '2,0': must be a whole number >= 1, got '0'")
