"""The command line as a newcomer meets it: --version, the demo, bad flags, bench without a GPU."""

import importlib.metadata
import subprocess
import sys
import types

import pytest

import nsa_metadata as nm
from nsa_metadata import cli


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "nsa_metadata.cli", *args],
                          capture_output=True, text=True, timeout=300)


def test_version_matches_the_installed_distribution():
    r = run_cli("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"nsa-metadata {nm.__version__}"
    assert nm.__version__ == importlib.metadata.version("nsa-metadata")


@pytest.mark.parametrize("extra", [["--host"], []])
def test_demo_shows_every_mode(extra):
    r = run_cli("demo", "--bs", "5", "--context", "300", "--page-size", "16", "--kpool", "4",
                "--topk", "100", *extra)
    assert r.returncode == 0, r.stderr
    for mode in ("decode:", "target_verify:", "draft_extend:"):
        assert mode in r.stdout
    assert "seqlens_expanded" in r.stdout and "real_page_table" in r.stdout
    assert "req_to_token 10 x 300, max_len 300" in r.stdout
    assert r.stdout.rstrip().splitlines()[-1].startswith("OK")
    assert ("--host given" in r.stdout) == (extra == ["--host"])  # (the flag decides, not the machine)
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--bs", "0"], "argument --bs: must be at least 1, not 0"),
    (["--bs", "-1"], "argument --bs: must be at least 1, not -1"),
    (["--bs", "two"], "argument --bs: expected an integer, not 'two'"),
    (["--context", "-5"], "argument --context: must be at least 2, not -5"),
    (["--topk", "0"], "argument --topk: must be at least 1, not 0"),
    (["--kpool", "0"], "argument --kpool: must be at least 1, not 0"),
    (["--page-size", "0"], "argument --page-size: must be at least 1, not 0"),
    (["--next-n", "0"], "argument --next-n: must be at least 1, not 0"),
    (["--seed", "-1"], "argument --seed: must be at least 0, not -1"),
    (["--context", "4", "--next-n", "4"], "--context (4) must be greater than --next-n (4)"),
    (["--bs", "100000"], "the demo stays within"),
    (["--context", "10", "--page-size", "2000000000"], "slot indices past int32"),
    (["--no-such-flag"], "unrecognized arguments"),
])
def test_impossible_demo_flags_exit_2_with_a_message(args, message):
    r = run_cli("demo", *args)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""


def test_every_flag_has_help():
    top, demo = cli.parser()
    for p in (top, demo):
        for action in p._actions:
            assert action.help, f"{p.prog} {action.option_strings or action.dest} has no help"


def fake_torch(version, cuda):
    return types.SimpleNamespace(__version__=version, version=types.SimpleNamespace(cuda=cuda),
                                 cuda=types.SimpleNamespace(is_available=lambda: False))


@pytest.mark.parametrize("torch_module, message", [
    (None, "torch is not installed"),
    (fake_torch("2.11.0+cpu", None), "torch 2.11.0+cpu is a CPU-only build"),
    (fake_torch("2.11.0+cu130", "13.0"), "torch 2.11.0+cu130 (CUDA 13.0) sees no usable CUDA GPU"),
])
def test_bench_says_what_is_missing(monkeypatch, capsys, torch_module, message):
    monkeypatch.setitem(sys.modules, "torch", torch_module)  # None: `import torch` fails
    assert cli.main(["bench"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nsa-metadata bench needs torch with a CUDA GPU: ")
    assert message in err
