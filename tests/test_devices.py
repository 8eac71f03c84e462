"""`--device`: one parser (sid.devices) for every command, with one set of one-line errors."""

import pytest
import torch

from sid.commands import distill, evaluate, generate, phema
from sid.devices import parse_device, parse_devices

CUDA = torch.cuda.device_count()


@pytest.mark.parametrize("text, devices", [
    ("cpu", ["cpu"]),
    (" cpu ", ["cpu"]),
    ("cpu,cpu", ["cpu", "cpu"]),  # one worker per entry (sid generate's shards)
    ("auto", [f"cuda:{i}" for i in range(CUDA)] or ["cpu"]),
])
def test_devices_are_parsed_into_a_list(text, devices):
    assert [str(d) for d in parse_devices(text)] == devices


@pytest.mark.parametrize("text, words", [
    ("gpu", "--device: unknown device 'gpu': expected auto, cpu, cuda or cuda:N"),
    ("mps", "--device: unsupported device 'mps': expected auto, cpu, cuda or cuda:N"),
    (f"cuda:{CUDA}", f"--device: device 'cuda:{CUDA}': this machine has {CUDA} CUDA device(s)"),
    ("", "--device: expected auto, cpu, cuda or cuda:N (comma-separated), got ''"),
    ("cpu,", "--device: expected auto, cpu, cuda or cuda:N (comma-separated), got 'cpu,'"),
])
def test_a_bad_device_is_one_error_naming_what_was_expected(text, words):
    for parse in (parse_devices, parse_device):
        with pytest.raises(ValueError) as error:
            parse(text)
        assert str(error.value) == words


def test_one_device_where_a_command_runs_on_one():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto") == (torch.device("cuda:0") if CUDA else torch.device("cpu"))
    with pytest.raises(ValueError) as error:
        parse_device("cpu,cpu")
    assert str(error.value) == "--device: expected one device (auto, cpu, cuda or cuda:N), got 'cpu,cpu'"


@pytest.mark.parametrize("command, argv", [
    (distill.main, ["--out", "OUT"]),
    (generate.main, ["--network", "digits", "--out", "OUT"]),
    (evaluate.main, ["digits", "--out", "OUT/scores.parquet"]),
    (phema.main, ["OUT"]),
], ids=["distill", "generate", "evaluate", "phema"])
def test_every_command_gives_the_same_device_error(tmp_path, capsys, command, argv):
    argv = [str(tmp_path / "out") if a == "OUT" else a.replace("OUT", str(tmp_path / "out")) for a in argv]
    with pytest.raises(SystemExit) as exited:
        command([*argv, "--device", "gpu"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exited.value.code == 2 and last.endswith("error: --device: unknown device 'gpu': expected auto, cpu, "
                                                    "cuda or cuda:N"), last
    assert not (tmp_path / "out").exists()
