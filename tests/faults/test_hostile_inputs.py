"""Crafted files against the loaders of this project's own formats and the readers of images, npz and Parquet
(issue 29): torch.save files whose pickle would make loading crawl or balloon, architectures that would take hours to
build (also as a diffusers folder), decompression bombs, files that are not regular files. Each must end in one clear
ValueError naming the file, within a time bound and without a memory blow-up.

The files are made here; they are loaded in ONE child process (torch imported once) under an address-space limit,
which reports per case its outcome, its time and how much it raised the child's peak memory. A case that hangs
(a FIFO opened for reading) is last, and the child's time limit is enforced here, not by pytest-timeout.

`PYTHONPATH=. python tests/faults/test_hostile_inputs.py` measures each case in a process of its own instead
(its time and the process's peak memory, for docs/reliability.md)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from sid.config import preset
from sid.networks.precond import EDMPrecond
from sid.results import write_evaluations
from sid.saved import FORMAT
from sid.testing.crafted import colliding_ints, name
from sid.testing.fixtures import TEACHER_KWARGS
from sid.testing.results import row

ROOT = Path(__file__).resolve().parents[2]

SECONDS = 5.0          # each refusal, on a loaded 2-core machine (they take milliseconds)
MEMORY = 256 * 2**20   # how far one case may raise the loading process's resident memory
CHILD_SECONDS = 240    # the whole child; a case that blocks is reported as not done in time
BLOCKS = ("EDMPrecond", 10**6)  # num_blocks 10**6: building it hung every loader but the .pkl one


# ---------------------------------------------------------------------------------------------- torch.save files
def torch_file(path: Path, data_pkl: bytes, records: dict[str, Callable[[zipfile.ZipFile, str], None]] | None = None,
               ) -> Path:
    """A torch.save zip archive whose pickle is `data_pkl` (torch.save lays it out; the pickle is then replaced)."""
    torch.save({}, path)
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    prefix = members[0][0].split("/")[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for filename, data in members:
            out.writestr(filename, data_pkl if filename.endswith("/data.pkl") else data)
        for key, write in (records or {}).items():
            write(out, f"{prefix}/data/{key}")
    return path


def saved(path: Path, **contents) -> Path:
    torch.save(contents, path)
    return path


def too_many_blocks(**more) -> dict:
    return dict(TEACHER_KWARGS, num_blocks=10**6, **more)


def pt_teacher_of_10e6_blocks(tmp: Path) -> Path:
    return saved(tmp / "teacher.pt", init_kwargs=too_many_blocks(), state_dict={})


def pt_snapshot_of_10e6_blocks(tmp: Path) -> Path:
    return saved(tmp / "generator-000001.000.pt", init_kwargs=too_many_blocks(), state_dict={}, sigma_init=2.5)


def checkpoint_of_10e6_blocks(tmp: Path) -> Path:
    return saved(tmp / "checkpoint.pt", generator_init_kwargs=too_many_blocks(), generator_ema={}, config={})


def export(tmp: Path, init_kwargs) -> Path:
    save_file({"x": torch.zeros(1)}, tmp / "g.safetensors")
    (tmp / "g.json").write_text(json.dumps(dict(format=FORMAT, init_kwargs=init_kwargs, sigma_init=2.5)))
    return tmp / "g.safetensors"


def export_of_10e6_blocks(tmp: Path) -> Path:
    return export(tmp, too_many_blocks())


def export_whose_arguments_are_a_list(tmp: Path) -> Path:
    return export(tmp, [1, 2, 3])


def phema_run_of_10e6_blocks(tmp: Path) -> Path:
    run = tmp / "run"
    (run / "phema").mkdir(parents=True)
    saved(run / "phema" / "0.0500-000000.016.pt", init_kwargs=too_many_blocks(), state_dict={},
          config=preset("digits").to_dict())
    return run


def weights_in_zero_strides(tmp: Path) -> Path:
    """An ADM teacher of 789M parameters in 30 KB: every weight a stride-0 view of one stored zero. Building it
    for real takes 3 GB."""
    kwargs = dict(img_resolution=8, img_channels=3, label_dim=0, model_type="DhariwalUNet", model_channels=1024,
                  channel_mult=[1, 2], num_blocks=1, attn_resolutions=[])
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in EDMPrecond(**kwargs).state_dict().items()}
    zero = torch.zeros(1)
    return saved(tmp / "zeros.pt", init_kwargs=kwargs, state_dict={k: zero.expand(s) for k, s in shapes.items()})


def pt_dict_of_keys_that_hash_alike(tmp: Path) -> Path:
    """torch.load's weights_only unpickler inserts 75000 integer keys with one hash: minutes (O(n^2))."""
    pairs = b"".join(key + b"N" for key in colliding_ints(75_000))
    return torch_file(tmp / "keys.pt", b"\x80\x02}(" + pairs + b"u.")


def pt_bytearray_of_8_gib(tmp: Path) -> Path:
    """weights_only allows builtins.bytearray, whose argument may be a length: 8 GiB from 60 bytes."""
    length = (8 * 2**30).to_bytes(5, "little")
    return torch_file(tmp / "bytes.pt", b"\x80\x02" + name("builtins", "bytearray") + b"\x8a\x05" + length
                      + b"\x85R.")


def pt_deflated_storage(tmp: Path) -> Path:
    """torch.load inflates a deflated member: 512 MiB of weights from a file of 0.5 MB."""
    numel = 2**27

    def record(out: zipfile.ZipFile, filename: str) -> None:
        with out.open(filename, "w") as f:  # deflated, as the archive's default below
            block = bytes(2**24)
            for _ in range(numel * 4 // len(block)):
                f.write(block)

    storage = (b"(" + b"X\x07\x00\x00\x00storage" + name("torch", "FloatStorage") + b"X\x01\x00\x00\x000"
               + b"X\x03\x00\x00\x00cpu" + b"J" + numel.to_bytes(4, "little") + b"tQ")
    tensor = (name("torch._utils", "_rebuild_tensor_v2") + b"(" + storage + b"K\x00" + b"J"
              + numel.to_bytes(4, "little") + b"\x85K\x01\x85\x89" + name("collections", "OrderedDict") + b")RtR")
    path = tmp / "deflated.pt"
    torch.save({}, path)
    with zipfile.ZipFile(path) as source:
        members = [(info.filename, source.read(info)) for info in source.infolist()]
    prefix = members[0][0].split("/")[0]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out:
        for filename, data in members:
            out.writestr(filename, b"\x80\x02}X\x01\x00\x00\x00t" + tensor + b"s." if filename.endswith("/data.pkl")
                         else data, compress_type=zipfile.ZIP_STORED)
        record(out, f"{prefix}/data/0")
    return path


# ---------------------------------------------------------------------------------------------- npz, images, Parquet
def npz(path: Path, member: str, npy: bytes, compression: int) -> Path:
    with zipfile.ZipFile(path, "w", compression) as out:
        out.writestr(member, npy)
    return path


def npy_header(shape: tuple, descr: str) -> bytes:
    header = repr(dict(descr=descr, fortran_order=False, shape=shape)).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def reference_in_bzip2(tmp: Path) -> Path:
    """mu in a bzip2 member whose header asks for sigma's worth of memory: 4.3 GiB (23170 x 23170 float64)."""
    bomb = npz(tmp / "ref.npz", "mu.npy", npy_header((23170, 23170), "<f8") + bytes(8 * 1024), zipfile.ZIP_BZIP2)
    with zipfile.ZipFile(bomb, "a") as out:
        out.writestr("sigma.npy", npy_header((1, 1), "<f8") + bytes(8))
    return bomb


def images_whose_header_lies(tmp: Path) -> Path:
    """arr_0 stored, its header declaring 2 GiB of uint8 images, its data 64 bytes."""
    return npz(tmp / "images.npz", "arr_0.npy", npy_header((2**25, 8, 8, 1), "|u1") + bytes(64), zipfile.ZIP_STORED)


def png(width: int, height: int, color_type: int = 6) -> bytes:
    """A PNG of the given size (RGBA by default) with a token IDAT: PIL allocates width x height x 4 bytes before it
    notices the data is short."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(bytes(4096))) \
        + chunk(b"IEND", b"")


def folder_with_a_png_of_144m_pixels(tmp: Path) -> Path:
    folder = tmp / "pngs"
    folder.mkdir()
    (folder / "0.png").write_bytes(png(12_000, 12_000))
    return folder


def zip_with_an_image_member_of_640_mib(tmp: Path) -> Path:
    """A zip of images whose one member inflates to 640 MiB (all read into memory before decoding)."""
    path = tmp / "images.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as out, out.open("0.png", "w") as f:
        block = bytes(2**24)
        for _ in range(40):
            f.write(block)
    return path


def study_with_rows(tmp: Path, table, **options) -> Path:
    study = tmp / "study"
    write_evaluations(study / "evaluations" / "a.parquet", [row("s", "a", alpha=1.0, seed=0, kimg=0.0, fid=5.0)])
    pq.write_table(table, study / "evaluations" / "bomb.parquet", **options)
    return study


def parquet_of_repeated_text(tmp: Path) -> Path:
    """50 KB: a 1 MiB text stored once in its column's dictionary and used by 3800 rows (3.7 GiB decoded)."""
    text_values = pa.DictionaryArray.from_arrays(pa.array([0] * 3800, pa.int32()), pa.array(["x" * 2**20]))
    return study_with_rows(tmp, pa.table({"study": text_values}), store_schema=False)  # read back as plain text


def parquet_of_40m_rows(tmp: Path) -> Path:
    """A column of 4 * 10**7 nulls in 80 KB (pandas makes 4 * 10**7 Python objects of them)."""
    return study_with_rows(tmp, pa.table({"study": pa.nulls(4 * 10**7, pa.string())}))


DIFFUSERS_UNET = dict(_class_name="UNet2DModel", sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                      block_out_channels=[32], down_block_types=["DownBlock2D"], up_block_types=["UpBlock2D"],
                      norm_num_groups=8)
DIFFUSERS_SCHEDULER = dict(_class_name="DDPMScheduler", num_train_timesteps=1000, beta_schedule="linear")


def diffusers_folder(tmp: Path, unet: dict, scheduler: dict) -> Path:
    """A diffusers pipeline folder (unet/ + scheduler/) of the given configs; the weights file is never reached."""
    for sub, file, config in (("unet", "config.json", unet), ("scheduler", "scheduler_config.json", scheduler)):
        (tmp / "pipe" / sub).mkdir(parents=True)
        (tmp / "pipe" / sub / file).write_text(json.dumps(config))
    (tmp / "pipe" / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"")
    return tmp / "pipe"


def diffusers_unet_of_10e6_layers(tmp: Path) -> Path:
    return diffusers_folder(tmp, dict(DIFFUSERS_UNET, layers_per_block=10**6), DIFFUSERS_SCHEDULER)


def diffusers_scheduler_of_10e10_steps(tmp: Path) -> Path:
    return diffusers_folder(tmp, DIFFUSERS_UNET, dict(DIFFUSERS_SCHEDULER, num_train_timesteps=10**10))


def diffusers_config_that_is_a_fifo(tmp: Path) -> Path:
    folder = diffusers_folder(tmp, DIFFUSERS_UNET, DIFFUSERS_SCHEDULER)
    (folder / "unet" / "config.json").unlink()
    os.mkfifo(folder / "unet" / "config.json")
    return folder


def fifo_named_png(tmp: Path) -> Path:
    folder = tmp / "fifo"
    folder.mkdir()
    os.mkfifo(folder / "0.png")
    return folder


# case -> (maker, the call that reads it in the child, what the one-line error must say)
CASES = {
    ".pt teacher of 10**6 blocks": (pt_teacher_of_10e6_blocks, "teacher", "num_blocks = 1000000 is outside"),
    ".pt generator of 10**6 blocks": (pt_snapshot_of_10e6_blocks, "generator", "num_blocks = 1000000 is outside"),
    "checkpoint.pt of 10**6 blocks": (checkpoint_of_10e6_blocks, "generator", "num_blocks = 1000000 is outside"),
    "export of 10**6 blocks": (export_of_10e6_blocks, "generator", "num_blocks = 1000000 is outside"),
    "export whose arguments are a list": (export_whose_arguments_are_a_list, "generator",
                                          "expected JSON with format .* and init_kwargs"),
    "post-hoc EMA snapshots of 10**6 blocks": (phema_run_of_10e6_blocks, "phema", "num_blocks = 1000000 is outside"),
    "789M weights in zero strides": (weights_in_zero_strides, "teacher", "has a zero stride"),
    ".pt dict of keys that hash alike": (pt_dict_of_keys_that_hash_alike, "teacher", r"more than 64 integers of 2\*"),
    ".pt bytearray of 8 GiB": (pt_bytearray_of_8_gib, "teacher", "GLOBAL builtins.bytearray is not a global"),
    ".pt with a deflated storage": (pt_deflated_storage, "teacher", "compressed member '.*/data/0'"),
    "reference statistics in bzip2": (reference_in_bzip2, "reference", "compressed with method 12"),
    "images npz whose header lies": (images_whose_header_lies, "npz", "header declares \\[33554432, 8, 8, 1\\] uint8"),
    "PNG of 144M pixels": (folder_with_a_png_of_144m_pixels, "images", "12000 x 12000 pixels"),
    "zip member of 640 MiB": (zip_with_an_image_member_of_640_mib, "images", "671,088,640 bytes"),
    "Parquet text of 3.7 GiB": (parquet_of_repeated_text, "rows", "bomb.parquet: .*decode to 3,98"),
    "Parquet of 4*10**7 rows": (parquet_of_40m_rows, "rows", "bomb.parquet: .*40,000,000 rows"),
    "diffusers UNet of 10**6 layers per block": (diffusers_unet_of_10e6_layers, "diffusers",
                                                 "layers_per_block = 1000000 is outside"),
    "diffusers scheduler of 10**10 timesteps": (diffusers_scheduler_of_10e10_steps, "diffusers",
                                                "num_train_timesteps 10000000000 is outside"),
    "diffusers config.json that is a FIFO": (diffusers_config_that_is_a_fifo, "diffusers",
                                             "config.json is not a regular file"),  # it blocked too
    "FIFO named *.png": (fifo_named_png, "images", "0.png is not a regular file"),  # last: it blocked
}
assert list(CASES)[-1] == "FIFO named *.png"

CHILD = r"""
import json, resource, sys, time, warnings
from pathlib import Path
import torch
from sid.datasets import open_dataset
from sid.commands.phema import list_snapshots, rebuild
from sid.generators import load_generator
from sid.metrics import iter_image_batches, load_reference_stats
from sid.networks.vp import load_diffusers
from sid.results import read_evaluations
from sid.teachers import load_network_file

def phema(path):
    snaps, header = list_snapshots(Path(path))
    return rebuild(snaps, header, snaps[-1][0], 0.05)

def rows(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = read_evaluations(path)
    raise ValueError(f"{len(frame)} rows; " + " | ".join(str(w.message) for w in caught))

CALLS = dict(teacher=load_network_file, generator=load_generator, phema=phema, reference=load_reference_stats,
             npz=lambda path: next(open_dataset(path).images()), images=lambda path: next(iter_image_batches(path)),
             rows=rows, diffusers=load_diffusers)
import io, pyarrow as pa, pyarrow.parquet as pq
buffer = io.BytesIO()  # Arrow's allocator reserves its address space on first use: before the limit
pq.write_table(pa.table({"a": ["x"] * 1000}), buffer)
pq.read_table(pa.BufferReader(buffer.getvalue())).to_pandas()
if sys.argv[2] != "unlimited":
    vm = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + 2 ** 30, resource.RLIM_INFINITY))  # 1 GiB beyond the imports
def memory(key):  # bytes; VmHWM is the peak resident memory of this process image (ru_maxrss survives exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1]) * 1024

for case, call, path in json.loads(sys.argv[1]):
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # the peak starts again from the current resident memory
        reset = True
    except OSError:
        reset = False
    resident, peak, start = memory("VmRSS"), memory("VmHWM"), time.monotonic()
    try:
        CALLS[call](path)
        result = dict(loaded=True)
    except ValueError as e:
        result = dict(error=str(e))
    except BaseException as e:
        result = dict(other=f"{type(e).__name__}: {e}"[:300])
    seconds, now = time.monotonic() - start, memory("VmHWM")
    print(json.dumps(dict(case=case, seconds=seconds, grown=now - (resident if reset else peak), peak=now, **result)),
          flush=True)
"""


def make_all(folder: Path) -> list[tuple[str, str, str]]:
    files = []
    for i, (case, (make, call, _)) in enumerate(CASES.items()):
        (folder / str(i)).mkdir()
        files.append((case, call, str(make(folder / str(i)))))
    return files


def run_child(files: list, limit: str = "limited", timeout: float = CHILD_SECONDS) -> tuple[dict, str]:
    """Per case its report line, and the child's stderr (or why it did not finish)."""
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(files), limit], cwd=ROOT, capture_output=True,
                              text=True, timeout=timeout)
        out, err = done.stdout, done.stderr + ("" if done.returncode == 0 else f"\n(exit {done.returncode})")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = f"the loading process did not finish in {timeout} s"
    lines = {}
    for line in out.splitlines():
        entry = json.loads(line)
        lines[entry.pop("case")] = entry
    return lines, err


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, str]:
    return run_child(make_all(tmp_path_factory.mktemp("hostile")))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_file_is_one_clear_error_in_time_without_a_memory_blowup(report, case):
    lines, err = report
    assert case in lines, f"no result for this case: {err[-3000:]}"
    result = lines[case]
    assert "error" in result, result
    assert re.search(CASES[case][2], result["error"]), result["error"]
    assert "\n" not in result["error"] and "Traceback" not in result["error"]
    assert result["seconds"] < SECONDS, result
    assert result["grown"] < MEMORY, f"peak memory grew by {result['grown'] / 2**20:.0f} MiB: {result}"


def measure(files: list, limit: str, timeout: float) -> None:
    """Each case in a process of its own (torch imported in each): its time and the process's peak memory (with
    torch's import: ~0.3 GiB)."""
    print(f"{'case':40s} {'outcome':9s} {'s':>7s} {'peak MiB':>9s}")
    for case, call, path in files:
        lines, err = run_child([[case, call, path]], limit, timeout)
        line = lines.get(case, {})
        outcome = "refused" if "error" in line else ("loaded" if "loaded" in line else ("other" if line else "-"))
        seconds, peak = (f"{line['seconds']:7.2f}", f"{line['peak'] / 2**20:9.0f}") if line else (f">{timeout:.0f}", "")
        print(f"{case:40s} {outcome:9s} {seconds:>7s} {peak:>9s}  "
              f"{(line.get('error') or line.get('other') or err)[-100:]}", flush=True)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as folder:
        measure(make_all(Path(folder)), sys.argv[1] if len(sys.argv) > 1 else "unlimited", 60)
